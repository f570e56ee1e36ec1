//! Typed elements over Arrow columns.
//!
//! A `DStream<T>` carries `T: Data` as Arrow columns: `String` is one
//! `Utf8View` column, `u64` one `UInt64` column, a pair `(K, V)` the columns
//! of `K` followed by those of `V`. Closures never see Arrow: they get
//! [`Data::View`]s borrowed straight out of the buffers (`&str` for
//! `String`, `&[u8]` for `Vec<u8>`, plain copies for numbers), and they
//! produce output either by returning an owned value or by pushing views
//! into an [`Emitter`], which appends them to Arrow builders without a heap
//! allocation per record.
//!
//! Every type also has a byte encoding ([`Data::encode`]) used for keys and
//! values in RocksDB (state, result tables). For keys it preserves order:
//! integers are big-endian with the sign bit flipped, strings are raw bytes
//! when last in a key and escaped otherwise. The encoding is part of the
//! checkpoint schema (see ARCHITECTURE.md) and each type has a stable
//! [`Data::type_name`] that the checkpoint records to refuse an incompatible
//! change.

mod record;

pub use record::RecordReader;

use std::fmt::Debug;
use std::hash::{BuildHasher, Hash};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BinaryViewArray, BinaryViewBuilder, BooleanArray, BooleanBuilder,
    Float64Array, Float64Builder, Int32Array, Int32Builder, Int64Array, Int64Builder,
    StringViewArray, StringViewBuilder, UInt32Array, UInt32Builder, UInt64Array, UInt64Builder,
};
use arrow::datatypes::{DataType, Field};

/// Fixed seeds: shuffles and aggregations must hash the same way in every
/// run so a re-run batch sends every key to the same task.
pub(crate) fn hasher() -> foldhash::fast::FixedState {
    foldhash::fast::FixedState::with_seed(0x5eed_51ce)
}

/// An element type of a stream, stored as Arrow columns.
pub trait Data: Send + Sync + Clone + Debug + Default + 'static {
    /// What closures receive: a copyable view borrowed from the columns.
    type View<'a>: Copy + Debug;
    /// Reads views out of this type's columns.
    type Reader<'a>: Copy;
    /// Appends views to Arrow builders.
    type Builder: Send;

    /// Number of Arrow columns.
    const WIDTH: usize;
    /// Stable name recorded in the checkpoint, e.g. `string` or `(string,u64)`.
    fn type_name() -> String;
    /// Appends this type's fields, named after `name`.
    fn fields(name: &str, out: &mut Vec<Field>);
    fn reader(columns: &[ArrayRef]) -> Result<Self::Reader<'_>, SchemaError>;
    fn get<'a>(reader: &Self::Reader<'a>, row: usize) -> Self::View<'a>;
    fn builder(capacity: usize) -> Self::Builder;
    fn push(builder: &mut Self::Builder, value: Self::View<'_>);
    fn finish(builder: Self::Builder, out: &mut Vec<ArrayRef>);
    fn view(&self) -> Self::View<'_>;
    /// The same view with a shorter borrow. Views are covariant, but
    /// generic code cannot see it: this lets it pair views of two borrows.
    fn shorten<'a: 'b, 'b>(view: Self::View<'a>) -> Self::View<'b>;
    fn to_owned_value(view: Self::View<'_>) -> Self;
    /// Appends the encoding; `last` is true when nothing follows in a key.
    fn encode(view: Self::View<'_>, last: bool, out: &mut Vec<u8>);
    /// Decodes one value and advances `input` past it.
    fn decode(input: &mut &[u8], last: bool) -> Result<Self, CodecError>;
    /// Hashes a view for shuffles and hash tables (never persisted).
    fn hash_view(view: Self::View<'_>, state: &mut impl std::hash::Hasher);
    fn eq_view(a: Self::View<'_>, b: Self::View<'_>) -> bool;
    /// A 16-byte value equal for two rows exactly when their values are
    /// equal, when the type has one for this row (Arrow's inline views of
    /// strings up to 12 bytes). Lets aggregations skip hashing and
    /// comparing bytes.
    #[inline]
    fn inline_key(_reader: &Self::Reader<'_>, _row: usize) -> Option<u128> {
        None
    }
    /// [`Data::inline_key`]'s value for a view, for rows that never were
    /// columns (an operator fused with the aggregation after it).
    #[inline]
    fn inline_of(_view: Self::View<'_>) -> Option<u128> {
        None
    }
    /// Calls `f` with the value whose inline form is `inline` (`None` for
    /// types without one, or a form no value of this type has).
    #[inline]
    fn with_inline<R>(_inline: u128, _f: impl FnOnce(Self::View<'_>) -> R) -> Option<R> {
        None
    }
}

/// A type usable as a key: hashing and equality are total (no floats).
pub trait Key: Data {}

/// A value that can be appended to a stream of `Self::Owned`: owned
/// values, and borrowed views such as `&str` (so output can point into the
/// input without copying it to the heap first).
pub trait Emit {
    type Owned: Data;
    fn emit(self, builder: &mut <Self::Owned as Data>::Builder);
    /// Hands the element to `f` as a view of its owned type (rows that go
    /// straight into a fused aggregation instead of into columns).
    fn visit(self, f: &mut dyn for<'v> FnMut(<Self::Owned as Data>::View<'v>));
}

/// Collects the output of `flat_map`-style closures: into Arrow builders,
/// or, when the operator is fused with an aggregation after it, straight
/// into that aggregation one row at a time (no column is built).
pub struct Emitter<'s, U: Data> {
    target: Target<'s, U>,
    len: usize,
}

enum Target<'s, U: Data> {
    Columns(U::Builder),
    Rows(&'s mut dyn for<'v> FnMut(U::View<'v>)),
}

impl<U: Data> Emitter<'static, U> {
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        Emitter {
            target: Target::Columns(U::builder(capacity)),
            len: 0,
        }
    }
}

impl<'s, U: Data> Emitter<'s, U> {
    /// An emitter that hands every element to `sink` as it comes.
    pub(crate) fn into_rows(sink: &'s mut dyn for<'v> FnMut(U::View<'v>)) -> Self {
        Emitter {
            target: Target::Rows(sink),
            len: 0,
        }
    }

    /// Appends one element.
    #[inline]
    pub fn push<V: Emit<Owned = U>>(&mut self, value: V) {
        match &mut self.target {
            Target::Columns(builder) => value.emit(builder),
            Target::Rows(sink) => value.visit(&mut **sink),
        }
        self.len += 1;
    }

    /// Appends a view of an element of this very type.
    #[inline]
    pub fn push_view(&mut self, value: U::View<'_>) {
        match &mut self.target {
            Target::Columns(builder) => U::push(builder, value),
            Target::Rows(sink) => sink(value),
        }
        self.len += 1;
    }

    /// Appends every element of an iterator.
    pub fn extend<V: Emit<Owned = U>>(&mut self, values: impl IntoIterator<Item = V>) {
        for v in values {
            self.push(v);
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The collected rows as one batch of `schema`, or none if empty.
    pub(crate) fn into_batches(
        self,
        schema: &arrow::datatypes::SchemaRef,
    ) -> Result<Vec<arrow::array::RecordBatch>, arrow::error::ArrowError> {
        if self.len == 0 {
            return Ok(Vec::new());
        }
        Ok(vec![arrow::array::RecordBatch::try_new(
            schema.clone(),
            self.finish(),
        )?])
    }

    /// The collected columns (empty ones for an emitter of rows, whose
    /// elements went to its sink).
    pub(crate) fn finish(self) -> Vec<ArrayRef> {
        let mut out = Vec::with_capacity(U::WIDTH);
        let builder = match self.target {
            Target::Columns(builder) => builder,
            Target::Rows(_) => U::builder(0),
        };
        U::finish(builder, &mut out);
        out
    }
}

/// Columns that are not the shape a [`Data`] type reads (a job wired to the
/// wrong stream, or a checkpoint's table read as another type).
#[derive(Debug, Clone, thiserror::Error)]
#[error("schema mismatch: {0}")]
pub struct SchemaError(pub String);

/// A stored key or value that does not decode as the recorded type.
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot decode a stored {type_name}: {reason}")]
pub struct CodecError {
    pub type_name: &'static str,
    pub reason: &'static str,
}

fn take<'a>(
    input: &mut &'a [u8],
    n: usize,
    type_name: &'static str,
) -> Result<&'a [u8], CodecError> {
    if input.len() < n {
        return Err(CodecError {
            type_name,
            reason: "truncated",
        });
    }
    let (head, tail) = input.split_at(n);
    *input = tail;
    Ok(head)
}

pub(crate) fn hash_one<T: Data>(view: T::View<'_>) -> u64 {
    let mut h = hasher().build_hasher();
    T::hash_view(view, &mut h);
    std::hash::Hasher::finish(&h)
}

fn downcast<'a, A: 'static>(
    columns: &'a [ArrayRef],
    type_name: &str,
) -> Result<&'a A, SchemaError> {
    columns
        .first()
        .and_then(|c| c.as_any().downcast_ref::<A>())
        .ok_or_else(|| SchemaError(format!("expected a column of {type_name}")))
}

macro_rules! int_data {
    ($t:ty, $name:literal, $dt:expr, $array:ty, $builder:ty, $flip:expr) => {
        impl Data for $t {
            type View<'a> = $t;
            type Reader<'a> = &'a [$t];
            type Builder = $builder;
            const WIDTH: usize = 1;
            fn type_name() -> String {
                $name.into()
            }
            fn fields(name: &str, out: &mut Vec<Field>) {
                out.push(Field::new(name, $dt, false));
            }
            fn reader(columns: &[ArrayRef]) -> Result<&[$t], SchemaError> {
                Ok(downcast::<$array>(columns, $name)?.values())
            }
            #[inline]
            fn get<'a>(reader: &Self::Reader<'a>, row: usize) -> Self::View<'a> {
                reader[row]
            }
            fn builder(capacity: usize) -> $builder {
                <$builder>::with_capacity(capacity)
            }
            #[inline]
            fn push(builder: &mut $builder, value: $t) {
                builder.append_value(value)
            }
            fn finish(mut builder: $builder, out: &mut Vec<ArrayRef>) {
                out.push(Arc::new(builder.finish()));
            }
            fn view(&self) -> $t {
                *self
            }
            #[inline]
            fn shorten<'a: 'b, 'b>(view: $t) -> $t {
                view
            }
            fn to_owned_value(view: $t) -> $t {
                view
            }
            fn encode(view: $t, _last: bool, out: &mut Vec<u8>) {
                #[allow(clippy::unnecessary_cast)]
                let flipped = (view ^ $flip) as $t;
                out.extend_from_slice(&flipped.to_be_bytes());
            }
            fn decode(input: &mut &[u8], _last: bool) -> Result<$t, CodecError> {
                let bytes = take(input, std::mem::size_of::<$t>(), $name)?;
                let mut raw = [0u8; std::mem::size_of::<$t>()];
                raw.copy_from_slice(bytes);
                Ok(<$t>::from_be_bytes(raw) ^ $flip)
            }
            #[inline]
            fn hash_view(view: $t, state: &mut impl std::hash::Hasher) {
                view.hash(state)
            }
            #[inline]
            fn eq_view(a: $t, b: $t) -> bool {
                a == b
            }
        }
        impl Key for $t {}
        impl Emit for $t {
            type Owned = $t;
            #[inline]
            fn emit(self, builder: &mut $builder) {
                builder.append_value(self)
            }
            #[inline]
            fn visit(self, f: &mut dyn for<'v> FnMut(<Self::Owned as Data>::View<'v>)) {
                f(self)
            }
        }
    };
}

int_data!(u64, "u64", DataType::UInt64, UInt64Array, UInt64Builder, 0);
int_data!(u32, "u32", DataType::UInt32, UInt32Array, UInt32Builder, 0);
int_data!(
    i64,
    "i64",
    DataType::Int64,
    Int64Array,
    Int64Builder,
    i64::MIN
);
int_data!(
    i32,
    "i32",
    DataType::Int32,
    Int32Array,
    Int32Builder,
    i32::MIN
);

impl Data for f64 {
    type View<'a> = f64;
    type Reader<'a> = &'a [f64];
    type Builder = Float64Builder;
    const WIDTH: usize = 1;
    fn type_name() -> String {
        "f64".into()
    }
    fn fields(name: &str, out: &mut Vec<Field>) {
        out.push(Field::new(name, DataType::Float64, false));
    }
    fn reader(columns: &[ArrayRef]) -> Result<&[f64], SchemaError> {
        Ok(downcast::<Float64Array>(columns, "f64")?.values())
    }
    fn get<'a>(reader: &Self::Reader<'a>, row: usize) -> Self::View<'a> {
        reader[row]
    }
    fn builder(capacity: usize) -> Float64Builder {
        Float64Builder::with_capacity(capacity)
    }
    fn push(builder: &mut Float64Builder, value: f64) {
        builder.append_value(value)
    }
    fn finish(mut builder: Float64Builder, out: &mut Vec<ArrayRef>) {
        out.push(Arc::new(builder.finish()));
    }
    fn view(&self) -> f64 {
        *self
    }
    #[inline]
    fn shorten<'a: 'b, 'b>(view: f64) -> f64 {
        view
    }
    fn to_owned_value(view: f64) -> f64 {
        view
    }
    fn encode(view: f64, _last: bool, out: &mut Vec<u8>) {
        // Total order: flip all bits of negatives, only the sign of positives.
        let bits = view.to_bits();
        let ordered = if bits >> 63 == 1 {
            !bits
        } else {
            bits ^ (1 << 63)
        };
        out.extend_from_slice(&ordered.to_be_bytes());
    }
    fn decode(input: &mut &[u8], _last: bool) -> Result<f64, CodecError> {
        let bytes = take(input, 8, "f64")?;
        let mut raw = [0u8; 8];
        raw.copy_from_slice(bytes);
        let ordered = u64::from_be_bytes(raw);
        let bits = if ordered >> 63 == 1 {
            ordered ^ (1 << 63)
        } else {
            !ordered
        };
        Ok(f64::from_bits(bits))
    }
    fn hash_view(view: f64, state: &mut impl std::hash::Hasher) {
        view.to_bits().hash(state)
    }
    fn eq_view(a: f64, b: f64) -> bool {
        a.to_bits() == b.to_bits()
    }
}

impl Emit for f64 {
    type Owned = f64;
    fn emit(self, builder: &mut Float64Builder) {
        builder.append_value(self)
    }
    fn visit(self, f: &mut dyn for<'v> FnMut(f64)) {
        f(self)
    }
}

impl Data for bool {
    type View<'a> = bool;
    type Reader<'a> = &'a BooleanArray;
    type Builder = BooleanBuilder;
    const WIDTH: usize = 1;
    fn type_name() -> String {
        "bool".into()
    }
    fn fields(name: &str, out: &mut Vec<Field>) {
        out.push(Field::new(name, DataType::Boolean, false));
    }
    fn reader(columns: &[ArrayRef]) -> Result<&BooleanArray, SchemaError> {
        downcast::<BooleanArray>(columns, "bool")
    }
    fn get<'a>(reader: &Self::Reader<'a>, row: usize) -> Self::View<'a> {
        reader.value(row)
    }
    fn builder(capacity: usize) -> BooleanBuilder {
        BooleanBuilder::with_capacity(capacity)
    }
    fn push(builder: &mut BooleanBuilder, value: bool) {
        builder.append_value(value)
    }
    fn finish(mut builder: BooleanBuilder, out: &mut Vec<ArrayRef>) {
        out.push(Arc::new(builder.finish()));
    }
    fn view(&self) -> bool {
        *self
    }
    #[inline]
    fn shorten<'a: 'b, 'b>(view: bool) -> bool {
        view
    }
    fn to_owned_value(view: bool) -> bool {
        view
    }
    fn encode(view: bool, _last: bool, out: &mut Vec<u8>) {
        out.push(view as u8)
    }
    fn decode(input: &mut &[u8], _last: bool) -> Result<bool, CodecError> {
        Ok(take(input, 1, "bool")?[0] != 0)
    }
    fn hash_view(view: bool, state: &mut impl std::hash::Hasher) {
        view.hash(state)
    }
    fn eq_view(a: bool, b: bool) -> bool {
        a == b
    }
}
impl Key for bool {}
impl Emit for bool {
    type Owned = bool;
    fn emit(self, builder: &mut BooleanBuilder) {
        builder.append_value(self)
    }
    fn visit(self, f: &mut dyn for<'v> FnMut(bool)) {
        f(self)
    }
}

/// Byte strings inside a composite key: 0x00 is escaped as 0x00 0xFF and
/// the string ends with 0x00 0x01, so keys still sort bytewise.
fn encode_bytes(bytes: &[u8], last: bool, out: &mut Vec<u8>) {
    if last {
        out.extend_from_slice(bytes);
        return;
    }
    for &b in bytes {
        out.push(b);
        if b == 0 {
            out.push(0xFF);
        }
    }
    out.extend_from_slice(&[0, 1]);
}

fn decode_bytes(
    input: &mut &[u8],
    last: bool,
    type_name: &'static str,
) -> Result<Vec<u8>, CodecError> {
    if last {
        let all = input.to_vec();
        *input = &[];
        return Ok(all);
    }
    let mut out = Vec::new();
    let mut i = 0;
    while i < input.len() {
        let b = input[i];
        if b == 0 {
            match input.get(i + 1) {
                Some(0xFF) => {
                    out.push(0);
                    i += 2;
                }
                Some(1) => {
                    *input = &input[i + 2..];
                    return Ok(out);
                }
                _ => {
                    return Err(CodecError {
                        type_name,
                        reason: "bad escape",
                    });
                }
            }
        } else {
            out.push(b);
            i += 1;
        }
    }
    Err(CodecError {
        type_name,
        reason: "unterminated",
    })
}

impl Data for String {
    type View<'a> = &'a str;
    type Reader<'a> = &'a StringViewArray;
    type Builder = StringViewBuilder;
    const WIDTH: usize = 1;
    fn type_name() -> String {
        "string".into()
    }
    fn fields(name: &str, out: &mut Vec<Field>) {
        out.push(Field::new(name, DataType::Utf8View, false));
    }
    fn reader(columns: &[ArrayRef]) -> Result<&StringViewArray, SchemaError> {
        downcast::<StringViewArray>(columns, "string")
    }
    #[inline]
    fn get<'a>(reader: &Self::Reader<'a>, row: usize) -> Self::View<'a> {
        reader.value(row)
    }
    fn builder(capacity: usize) -> StringViewBuilder {
        StringViewBuilder::with_capacity(capacity)
    }
    #[inline]
    fn push(builder: &mut StringViewBuilder, value: &str) {
        builder.append_value(value)
    }
    fn finish(mut builder: StringViewBuilder, out: &mut Vec<ArrayRef>) {
        out.push(Arc::new(builder.finish()));
    }
    fn view(&self) -> &str {
        self
    }
    #[inline]
    fn shorten<'a: 'b, 'b>(view: &'a str) -> &'b str {
        view
    }
    fn to_owned_value(view: &str) -> String {
        view.to_owned()
    }
    fn encode(view: &str, last: bool, out: &mut Vec<u8>) {
        encode_bytes(view.as_bytes(), last, out)
    }
    fn decode(input: &mut &[u8], last: bool) -> Result<String, CodecError> {
        String::from_utf8(decode_bytes(input, last, "string")?).map_err(|_| CodecError {
            type_name: "string",
            reason: "not UTF-8",
        })
    }
    #[inline]
    fn hash_view(view: &str, state: &mut impl std::hash::Hasher) {
        view.hash(state)
    }
    #[inline]
    fn eq_view(a: &str, b: &str) -> bool {
        a == b
    }
    #[inline]
    fn inline_key(reader: &Self::Reader<'_>, row: usize) -> Option<u128> {
        // The low 32 bits are the length; up to 12 bytes the rest is the
        // string itself, zero-padded, so equal views mean equal strings.
        let view = reader.views()[row];
        ((view as u32) <= 12).then_some(view)
    }
    #[inline]
    fn inline_of(view: &str) -> Option<u128> {
        // Arrow's view of a short string: length, then the bytes, zero
        // padded. Built from two overlapping loads rather than by copying
        // the bytes into a buffer and reading it back (a stalled
        // store-to-load forward per word, a fifth of a word count's time).
        let b = view.as_bytes();
        let len = b.len();
        let le64 = |at: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[at..at + 8]);
            u64::from_le_bytes(w)
        };
        let le32 = |at: usize| {
            let mut w = [0u8; 4];
            w.copy_from_slice(&b[at..at + 4]);
            u32::from_le_bytes(w) as u64
        };
        let (low, high) = match len {
            // The last 8 bytes hold bytes 8..len in their top len - 8.
            8..=12 => (
                le64(0),
                le64(len - 8)
                    .checked_shr(8 * (16 - len) as u32)
                    .unwrap_or(0),
            ),
            4..=7 => (le32(0) | (le32(len - 4) >> (8 * (8 - len))) << 32, 0),
            0..=3 => (b.iter().rev().fold(0u64, |acc, &x| acc << 8 | x as u64), 0),
            _ => return None,
        };
        Some(len as u128 | (low as u128) << 32 | (high as u128) << 96)
    }
    #[inline]
    fn with_inline<R>(inline: u128, f: impl FnOnce(&str) -> R) -> Option<R> {
        let raw = inline.to_le_bytes();
        let len = inline as u32 as usize;
        let bytes = raw.get(4..4 + len)?;
        std::str::from_utf8(bytes).ok().map(f)
    }
}
impl Key for String {}
impl Emit for &str {
    type Owned = String;
    #[inline]
    fn emit(self, builder: &mut StringViewBuilder) {
        builder.append_value(self)
    }
    #[inline]
    fn visit(self, f: &mut dyn for<'v> FnMut(&'v str)) {
        f(self)
    }
}
impl Emit for String {
    type Owned = String;
    fn emit(self, builder: &mut StringViewBuilder) {
        builder.append_value(self)
    }
    fn visit(self, f: &mut dyn for<'v> FnMut(&'v str)) {
        f(&self)
    }
}

impl Data for Vec<u8> {
    type View<'a> = &'a [u8];
    type Reader<'a> = &'a BinaryViewArray;
    type Builder = BinaryViewBuilder;
    const WIDTH: usize = 1;
    fn type_name() -> String {
        "bytes".into()
    }
    fn fields(name: &str, out: &mut Vec<Field>) {
        out.push(Field::new(name, DataType::BinaryView, false));
    }
    fn reader(columns: &[ArrayRef]) -> Result<&BinaryViewArray, SchemaError> {
        downcast::<BinaryViewArray>(columns, "bytes")
    }
    #[inline]
    fn get<'a>(reader: &Self::Reader<'a>, row: usize) -> Self::View<'a> {
        reader.value(row)
    }
    fn builder(capacity: usize) -> BinaryViewBuilder {
        BinaryViewBuilder::with_capacity(capacity)
    }
    fn push(builder: &mut BinaryViewBuilder, value: &[u8]) {
        builder.append_value(value)
    }
    fn finish(mut builder: BinaryViewBuilder, out: &mut Vec<ArrayRef>) {
        out.push(Arc::new(builder.finish()));
    }
    fn view(&self) -> &[u8] {
        self
    }
    #[inline]
    fn shorten<'a: 'b, 'b>(view: &'a [u8]) -> &'b [u8] {
        view
    }
    fn to_owned_value(view: &[u8]) -> Vec<u8> {
        view.to_vec()
    }
    fn encode(view: &[u8], last: bool, out: &mut Vec<u8>) {
        encode_bytes(view, last, out)
    }
    fn decode(input: &mut &[u8], last: bool) -> Result<Vec<u8>, CodecError> {
        decode_bytes(input, last, "bytes")
    }
    fn hash_view(view: &[u8], state: &mut impl std::hash::Hasher) {
        view.hash(state)
    }
    fn eq_view(a: &[u8], b: &[u8]) -> bool {
        a == b
    }
}
impl Key for Vec<u8> {}
impl Emit for &[u8] {
    type Owned = Vec<u8>;
    fn emit(self, builder: &mut BinaryViewBuilder) {
        builder.append_value(self)
    }
    fn visit(self, f: &mut dyn for<'v> FnMut(&'v [u8])) {
        f(self)
    }
}
impl Emit for Vec<u8> {
    type Owned = Vec<u8>;
    fn emit(self, builder: &mut BinaryViewBuilder) {
        builder.append_value(self)
    }
    fn visit(self, f: &mut dyn for<'v> FnMut(&'v [u8])) {
        f(&self)
    }
}

impl<A: Data, B: Data> Data for (A, B) {
    type View<'a> = (A::View<'a>, B::View<'a>);
    type Reader<'a> = (A::Reader<'a>, B::Reader<'a>);
    type Builder = (A::Builder, B::Builder);
    const WIDTH: usize = A::WIDTH + B::WIDTH;
    fn type_name() -> String {
        format!("({},{})", A::type_name(), B::type_name())
    }
    fn fields(name: &str, out: &mut Vec<Field>) {
        let (a, b) = if name.is_empty() || name == "value" {
            ("key".to_string(), "value".to_string())
        } else {
            (format!("{name}.0"), format!("{name}.1"))
        };
        A::fields(&a, out);
        B::fields(&b, out);
    }
    fn reader(columns: &[ArrayRef]) -> Result<Self::Reader<'_>, SchemaError> {
        if columns.len() < A::WIDTH + B::WIDTH {
            return Err(SchemaError(format!(
                "expected the columns of {}",
                Self::type_name()
            )));
        }
        Ok((
            A::reader(&columns[..A::WIDTH])?,
            B::reader(&columns[A::WIDTH..])?,
        ))
    }
    #[inline]
    fn get<'a>(reader: &Self::Reader<'a>, row: usize) -> Self::View<'a> {
        (A::get(&reader.0, row), B::get(&reader.1, row))
    }
    fn builder(capacity: usize) -> Self::Builder {
        (A::builder(capacity), B::builder(capacity))
    }
    #[inline]
    fn push(builder: &mut Self::Builder, value: Self::View<'_>) {
        A::push(&mut builder.0, value.0);
        B::push(&mut builder.1, value.1);
    }
    fn finish(builder: Self::Builder, out: &mut Vec<ArrayRef>) {
        A::finish(builder.0, out);
        B::finish(builder.1, out);
    }
    fn view(&self) -> Self::View<'_> {
        (self.0.view(), self.1.view())
    }
    #[inline]
    fn shorten<'a: 'b, 'b>(view: Self::View<'a>) -> Self::View<'b> {
        (A::shorten(view.0), B::shorten(view.1))
    }
    fn to_owned_value(view: Self::View<'_>) -> Self {
        (A::to_owned_value(view.0), B::to_owned_value(view.1))
    }
    fn encode(view: Self::View<'_>, last: bool, out: &mut Vec<u8>) {
        A::encode(view.0, false, out);
        B::encode(view.1, last, out);
    }
    fn decode(input: &mut &[u8], last: bool) -> Result<Self, CodecError> {
        Ok((A::decode(input, false)?, B::decode(input, last)?))
    }
    fn hash_view(view: Self::View<'_>, state: &mut impl std::hash::Hasher) {
        A::hash_view(view.0, state);
        B::hash_view(view.1, state);
    }
    fn eq_view(a: Self::View<'_>, b: Self::View<'_>) -> bool {
        A::eq_view(a.0, b.0) && B::eq_view(a.1, b.1)
    }
}
impl<A: Key, B: Key> Key for (A, B) {}
impl<A: Emit, B: Emit> Emit for (A, B) {
    type Owned = (A::Owned, B::Owned);
    #[inline]
    fn emit(self, builder: &mut <Self::Owned as Data>::Builder) {
        self.0.emit(&mut builder.0);
        self.1.emit(&mut builder.1);
    }
    #[inline]
    fn visit(self, f: &mut dyn for<'v> FnMut(<Self::Owned as Data>::View<'v>)) {
        let (a, b) = self;
        let mut b = Some(b);
        a.visit(&mut |a| {
            if let Some(b) = b.take() {
                b.visit(&mut |b| f((A::Owned::shorten(a), B::Owned::shorten(b))));
            }
        });
    }
}

/// `Option<T>` is `T`'s columns plus a validity column, so a missing value
/// (a left outer join without a match) costs one bit.
impl<T: Data> Data for Option<T> {
    type View<'a> = Option<T::View<'a>>;
    type Reader<'a> = (&'a BooleanArray, T::Reader<'a>);
    type Builder = (BooleanBuilder, T::Builder);
    const WIDTH: usize = 1 + T::WIDTH;
    fn type_name() -> String {
        format!("option<{}>", T::type_name())
    }
    fn fields(name: &str, out: &mut Vec<Field>) {
        out.push(Field::new(
            format!("{name}.present"),
            DataType::Boolean,
            false,
        ));
        T::fields(name, out);
    }
    fn reader(columns: &[ArrayRef]) -> Result<Self::Reader<'_>, SchemaError> {
        let present = downcast::<BooleanArray>(columns, "option")?;
        Ok((present, T::reader(&columns[1..])?))
    }
    fn get<'a>(reader: &Self::Reader<'a>, row: usize) -> Self::View<'a> {
        reader.0.value(row).then(|| T::get(&reader.1, row))
    }
    fn builder(capacity: usize) -> Self::Builder {
        (
            BooleanBuilder::with_capacity(capacity),
            T::builder(capacity),
        )
    }
    fn push(builder: &mut Self::Builder, value: Self::View<'_>) {
        builder.0.append_value(value.is_some());
        match value {
            Some(v) => T::push(&mut builder.1, v),
            // A default value keeps the value columns aligned.
            None => T::push(&mut builder.1, T::default().view()),
        }
    }
    fn finish(builder: Self::Builder, out: &mut Vec<ArrayRef>) {
        let (mut present, values) = builder;
        out.push(Arc::new(present.finish()));
        T::finish(values, out);
    }
    fn view(&self) -> Self::View<'_> {
        self.as_ref().map(|v| v.view())
    }
    #[inline]
    fn shorten<'a: 'b, 'b>(view: Self::View<'a>) -> Self::View<'b> {
        view.map(T::shorten)
    }
    fn to_owned_value(view: Self::View<'_>) -> Self {
        view.map(T::to_owned_value)
    }
    fn encode(view: Self::View<'_>, last: bool, out: &mut Vec<u8>) {
        match view {
            None => out.push(0),
            Some(v) => {
                out.push(1);
                T::encode(v, last, out)
            }
        }
    }
    fn decode(input: &mut &[u8], last: bool) -> Result<Self, CodecError> {
        match take(input, 1, "option")?[0] {
            0 => Ok(None),
            _ => Ok(Some(T::decode(input, last)?)),
        }
    }
    fn hash_view(view: Self::View<'_>, state: &mut impl std::hash::Hasher) {
        match view {
            None => 0u8.hash(state),
            Some(v) => {
                1u8.hash(state);
                T::hash_view(v, state)
            }
        }
    }
    fn eq_view(a: Self::View<'_>, b: Self::View<'_>) -> bool {
        match (a, b) {
            (None, None) => true,
            (Some(a), Some(b)) => T::eq_view(a, b),
            _ => false,
        }
    }
}
impl<T: Key> Key for Option<T> {}

impl<T: Emit> Emit for Option<T>
where
    T::Owned: Data,
{
    type Owned = Option<T::Owned>;
    fn emit(self, builder: &mut <Self::Owned as Data>::Builder) {
        builder.0.append_value(self.is_some());
        match self {
            Some(v) => {
                v.emit(&mut builder.1);
            }
            None => T::Owned::push(&mut builder.1, T::Owned::default().view()),
        }
    }
    fn visit(self, f: &mut dyn for<'v> FnMut(<Self::Owned as Data>::View<'v>)) {
        match self {
            Some(v) => v.visit(&mut |v| f(Some(v))),
            None => f(None),
        }
    }
}

/// Encodes a whole key or value.
pub fn encode_to_vec<T: Data>(view: T::View<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    T::encode(view, true, &mut out);
    out
}

/// Decodes a whole key or value, refusing trailing bytes.
pub fn decode_all<T: Data>(mut bytes: &[u8]) -> Result<T, CodecError> {
    let value = T::decode(&mut bytes, true)?;
    if !bytes.is_empty() {
        return Err(CodecError {
            type_name: "value",
            reason: "trailing bytes",
        });
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A string's inline form made from the view is Arrow's own view of
    /// it (strings up to 12 bytes), and gives the string back.
    #[test]
    fn inline_forms_of_short_strings_are_arrows_views() {
        let words = [
            "",
            "a",
            "ab",
            "abc",
            "é",
            "abcd",
            "abcde",
            "abcdef",
            "abcdefg",
            "w1000000",
            "abcdefghi",
            "abcdefghij",
            "abcdefghijk",
            "twelve-bytes",
            "thirteen-byte",
        ];
        let array = StringViewArray::from_iter_values(words);
        for (row, word) in words.iter().enumerate() {
            let inline = String::inline_of(word);
            assert_eq!(inline, String::inline_key(&&array, row), "{word:?}");
            assert_eq!(inline.is_some(), word.len() <= 12, "{word:?}");
            if let Some(inline) = inline {
                assert_eq!(
                    String::with_inline(inline, |s| s.to_owned()).as_deref(),
                    Some(*word)
                );
            }
        }
    }

    fn roundtrip<T: Data + PartialEq>(value: T) {
        let bytes = encode_to_vec::<T>(value.view());
        assert_eq!(decode_all::<T>(&bytes).unwrap(), value);
    }

    #[test]
    fn codec_roundtrips() {
        roundtrip(42u64);
        roundtrip(-7i64);
        roundtrip(-1.5f64);
        roundtrip(String::from("héllo\0world"));
        roundtrip((String::from("a\0"), (7u64, String::from("b"))));
        roundtrip(Some((1i32, vec![0u8, 255, 0])));
        roundtrip(None::<String>);
    }

    #[test]
    fn key_encoding_preserves_order() {
        let mut keys: Vec<(i64, String)> = vec![
            (-5, "b".into()),
            (3, "a".into()),
            (-5, "a\0".into()),
            (-5, "a".into()),
            (i64::MAX, String::new()),
            (i64::MIN, "z".into()),
        ];
        let mut encoded: Vec<Vec<u8>> = keys
            .iter()
            .map(|k| encode_to_vec::<(i64, String)>(k.view()))
            .collect();
        keys.sort();
        encoded.sort();
        let decoded: Vec<(i64, String)> = encoded.iter().map(|b| decode_all(b).unwrap()).collect();
        assert_eq!(decoded, keys);
    }

    #[test]
    fn builders_and_readers_agree() {
        let mut emitter = Emitter::<(String, Option<u64>)>::with_capacity(4);
        emitter.push(("x", None::<u64>));
        emitter.push(("y", Some(3u64)));
        emitter.push((String::from("z"), None::<u64>));
        let columns = emitter.finish();
        assert_eq!(columns.len(), <(String, Option<u64>)>::WIDTH);
        let reader = <(String, Option<u64>)>::reader(&columns).unwrap();
        let rows: Vec<_> = (0..3)
            .map(|i| <(String, Option<u64>)>::get(&reader, i))
            .collect();
        assert_eq!(rows, vec![("x", None), ("y", Some(3)), ("z", None)]);
    }
}
