//! A response buffer that splices stored record bytes in by reference.
//!
//! Fetch responses are mostly record batches read from segment files. The
//! `kafka-protocol` encoder writes every field through `put_slice`; this
//! buffer recognises slices that lie inside the record buffers it was given
//! and keeps them as `Bytes` references instead of copying them, so a
//! fetched batch is copied once (file → buffer) and then written to the
//! socket from that buffer with vectored writes.
//!
//! It must never reorder bytes: the frame is the concatenation of `chunks`.

use std::ops::Range;

use bytes::buf::UninitSlice;
use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::protocol::buf::ByteBufMut;

/// Smaller slices are cheaper to copy than to track.
const SPLICE_MIN: usize = 4096;

pub(crate) struct SplicingBuf {
    done: Vec<Bytes>,
    done_len: usize,
    current: BytesMut,
    sources: Vec<Bytes>,
}

impl SplicingBuf {
    pub fn new(sources: Vec<Bytes>) -> SplicingBuf {
        SplicingBuf {
            done: Vec::with_capacity(2 * sources.len() + 1),
            done_len: 0,
            current: BytesMut::with_capacity(512),
            sources,
        }
    }

    /// The frame as chunks, in order.
    pub fn into_chunks(mut self) -> Vec<Bytes> {
        if !self.current.is_empty() {
            self.done.push(self.current.freeze());
        }
        self.done
    }

    /// Overwrites bytes already written (the frame's size prefix).
    pub fn patch(&mut self, at: usize, bytes: &[u8]) {
        assert!(
            at + bytes.len() <= self.done.first().map_or(self.current.len(), |c| c.len()),
            "patch must fall inside the first chunk"
        );
        match self.done.first_mut() {
            Some(first) => {
                let mut owned = BytesMut::from(&first[..]);
                owned[at..at + bytes.len()].copy_from_slice(bytes);
                *first = owned.freeze();
            }
            None => self.current[at..at + bytes.len()].copy_from_slice(bytes),
        }
    }

    fn source_of(&self, src: &[u8]) -> Option<Bytes> {
        let (start, end) = (src.as_ptr() as usize, src.as_ptr() as usize + src.len());
        self.sources
            .iter()
            .find(|b| {
                let base = b.as_ptr() as usize;
                start >= base && end <= base + b.len()
            })
            .map(|b| b.slice_ref(src))
    }
}

// SAFETY: every method delegates to `current`, a BytesMut, whose own
// BufMut implementation upholds the contract.
unsafe impl BufMut for SplicingBuf {
    fn remaining_mut(&self) -> usize {
        self.current.remaining_mut()
    }

    unsafe fn advance_mut(&mut self, cnt: usize) {
        unsafe { self.current.advance_mut(cnt) }
    }

    fn chunk_mut(&mut self) -> &mut UninitSlice {
        self.current.chunk_mut()
    }

    fn put_slice(&mut self, src: &[u8]) {
        if src.len() >= SPLICE_MIN
            && let Some(piece) = self.source_of(src)
        {
            let head = std::mem::take(&mut self.current).freeze();
            self.done_len += head.len() + piece.len();
            self.done.push(head);
            self.done.push(piece);
            return;
        }
        self.current.extend_from_slice(src);
    }
}

impl ByteBufMut for SplicingBuf {
    fn offset(&self) -> usize {
        self.done_len + self.current.len()
    }

    // Message encoders only append; gaps (seek/range) are used when
    // encoding records, which the broker never does.
    fn seek(&mut self, offset: usize) {
        let local = offset
            .checked_sub(self.done_len)
            .expect("SplicingBuf cannot seek into spliced chunks");
        self.current.resize(local, 0);
    }

    fn range(&mut self, r: Range<usize>) -> &mut [u8] {
        let base = self.done_len;
        &mut self.current[r.start - base..r.end - base]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spliced_frame_equals_copied_frame() {
        let records = Bytes::from(vec![7u8; 10_000]);
        let mut spliced = SplicingBuf::new(vec![records.clone()]);
        let mut copied = BytesMut::new();
        for buf in [&mut spliced as &mut dyn BufMut, &mut copied] {
            buf.put_i32(0);
            buf.put_slice(b"header");
            buf.put_slice(&records[100..9_000]);
            buf.put_slice(&records[..10]);
            buf.put_i16(-1);
        }
        spliced.patch(0, &42i32.to_be_bytes());
        copied[..4].copy_from_slice(&42i32.to_be_bytes());
        let chunks = spliced.into_chunks();
        assert_eq!(chunks.len(), 3, "the large slice is spliced, not copied");
        assert_eq!(chunks[1].as_ptr(), records[100..].as_ptr());
        assert_eq!(chunks.concat(), copied.to_vec());
    }
}
