//! The Nexmark suite's user function: `count_char(text, character)`, the
//! number of times the first byte of `character` occurs in `text` (0 for
//! a NULL text), as the suite's `CountChar` that Flink's q14 registers
//! with `CREATE FUNCTION`. Sluice has no way to load code from a script:
//! a Rust job registers it on the script (`Script::register_udf`), as
//! `jobs/nexmark_q14.rs` does.

use std::sync::Arc;

use arrow::array::{Array, AsArray, Int64Builder};
use arrow::datatypes::DataType;
use sluice_sql::datafusion::common::{exec_err, plan_err};
use sluice_sql::datafusion::error::Result;
use sluice_sql::datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

/// `count_char(text, character)`.
pub fn count_char() -> ScalarUDF {
    ScalarUDF::from(CountChar {
        signature: Signature::user_defined(Volatility::Immutable),
    })
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct CountChar {
    signature: Signature,
}

impl ScalarUDFImpl for CountChar {
    fn name(&self) -> &str {
        "count_char"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, args: &[DataType]) -> Result<Vec<DataType>> {
        if args.len() != 2 {
            return plan_err!("count_char(text, character) takes two arguments");
        }
        Ok(vec![DataType::Utf8, DataType::Utf8])
    }

    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(DataType::Int64)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let rows = args.number_rows;
        let [text, character] = args.args.as_slice() else {
            return exec_err!("count_char(text, character) takes two arguments");
        };
        let (text, character) = (text.to_array(rows)?, character.to_array(rows)?);
        let (text, character) = (text.as_string::<i32>(), character.as_string::<i32>());
        let mut out = Int64Builder::with_capacity(rows);
        for row in 0..rows {
            if text.is_null(row) {
                out.append_value(0);
                continue;
            }
            let Some(&byte) = (!character.is_null(row))
                .then(|| character.value(row).as_bytes().first())
                .flatten()
            else {
                return exec_err!("count_char(text, character): the character is empty or NULL");
            };
            let n = text.value(row).bytes().filter(|&b| b == byte).count();
            out.append_value(n as i64);
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}
