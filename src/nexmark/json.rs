//! Events as JSON objects, one per record, with the field names of
//! RisingWave's Nexmark sources:
//!
//! ```text
//! person  {"id","name","email_address","credit_card","city","state","date_time","extra"}
//! auction {"id","item_name","description","initial_bid","reserve","date_time","expires","seller","category","extra"}
//! bid     {"auction","bidder","price","channel","url","date_time","extra"}
//! ```
//!
//! Numbers are JSON integers; `date_time` and `expires` are strings
//! `"YYYY-MM-DD HH:MM:SS.mmm"` in UTC, which arrow-json (and so a stream
//! column declared `TIMESTAMP`) reads as `Timestamp(Millisecond, None)`.
//! Written by hand into a reused buffer: this is the generator's hot path.

use super::generator::{Auction, Bid, Event, Person};

/// Appends `event` as one JSON object (no newline).
pub fn write_event(event: &Event<'_>, out: &mut Vec<u8>) {
    match event {
        Event::Person(p) => write_person(p, out),
        Event::Auction(a) => write_auction(a, out),
        Event::Bid(b) => write_bid(b, out),
    }
}

fn write_person(p: &Person, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"id\":");
    write_int(p.id, out);
    out.extend_from_slice(b",\"name\":");
    write_str(&p.name, out);
    out.extend_from_slice(b",\"email_address\":");
    write_str(&p.email_address, out);
    out.extend_from_slice(b",\"credit_card\":");
    write_str(&p.credit_card, out);
    out.extend_from_slice(b",\"city\":");
    write_str(p.city, out);
    out.extend_from_slice(b",\"state\":");
    write_str(p.state, out);
    out.extend_from_slice(b",\"date_time\":");
    write_timestamp(p.date_time, out);
    out.extend_from_slice(b",\"extra\":");
    write_str(&p.extra, out);
    out.push(b'}');
}

fn write_auction(a: &Auction, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"id\":");
    write_int(a.id, out);
    out.extend_from_slice(b",\"item_name\":");
    write_str(&a.item_name, out);
    out.extend_from_slice(b",\"description\":");
    write_str(&a.description, out);
    out.extend_from_slice(b",\"initial_bid\":");
    write_int(a.initial_bid, out);
    out.extend_from_slice(b",\"reserve\":");
    write_int(a.reserve, out);
    out.extend_from_slice(b",\"date_time\":");
    write_timestamp(a.date_time, out);
    out.extend_from_slice(b",\"expires\":");
    write_timestamp(a.expires, out);
    out.extend_from_slice(b",\"seller\":");
    write_int(a.seller, out);
    out.extend_from_slice(b",\"category\":");
    write_int(a.category, out);
    out.extend_from_slice(b",\"extra\":");
    write_str(&a.extra, out);
    out.push(b'}');
}

fn write_bid(b: &Bid<'_>, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"auction\":");
    write_int(b.auction, out);
    out.extend_from_slice(b",\"bidder\":");
    write_int(b.bidder, out);
    out.extend_from_slice(b",\"price\":");
    write_int(b.price, out);
    out.extend_from_slice(b",\"channel\":");
    write_str(b.channel, out);
    out.extend_from_slice(b",\"url\":");
    write_str(b.url, out);
    out.extend_from_slice(b",\"date_time\":");
    write_timestamp(b.date_time, out);
    out.extend_from_slice(b",\"extra\":");
    write_str(&b.extra, out);
    out.push(b'}');
}

fn write_int(v: i64, out: &mut Vec<u8>) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut rest = v.unsigned_abs();
    loop {
        at -= 1;
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    if v < 0 {
        out.push(b'-');
    }
    out.extend_from_slice(&digits[at..]);
}

/// A JSON string. Generated text is letters, digits, spaces and URL
/// punctuation, so the escapes are there for correctness, not speed.
fn write_str(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.extend_from_slice(s.as_bytes());
    } else {
        for c in s.chars() {
            match c {
                '"' => out.extend_from_slice(b"\\\""),
                '\\' => out.extend_from_slice(b"\\\\"),
                c if (c as u32) < 0x20 => {
                    out.extend_from_slice(format!("\\u{:04x}", c as u32).as_bytes());
                }
                c => out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
            }
        }
    }
    out.push(b'"');
}

/// `ms` since the Unix epoch as `"YYYY-MM-DD HH:MM:SS.mmm"` (UTC), quoted.
fn write_timestamp(ms: i64, out: &mut Vec<u8>) {
    out.push(b'"');
    let days = ms.div_euclid(86_400_000);
    let in_day = ms.rem_euclid(86_400_000);
    let (year, month, day) = sluice_log::common::civil_from_days(days);
    let pad = |v: i64, width: usize, out: &mut Vec<u8>| {
        let mut buf = [b'0'; 20];
        let mut at = buf.len();
        let mut rest = v.unsigned_abs();
        while rest > 0 {
            at -= 1;
            buf[at] = b'0' + (rest % 10) as u8;
            rest /= 10;
        }
        at = at.min(buf.len() - width);
        if v < 0 {
            out.push(b'-');
        }
        out.extend_from_slice(&buf[at..]);
    };
    pad(year, 4, out);
    out.push(b'-');
    pad(month, 2, out);
    out.push(b'-');
    pad(day, 2, out);
    out.push(b' ');
    pad(in_day / 3_600_000, 2, out);
    out.push(b':');
    pad(in_day / 60_000 % 60, 2, out);
    out.push(b':');
    pad(in_day / 1000 % 60, 2, out);
    out.push(b'.');
    pad(in_day % 1000, 3, out);
    out.push(b'"');
}

/// The timestamp format of the JSON records, unquoted.
pub fn format_timestamp(ms: i64) -> String {
    let mut out = Vec::with_capacity(25);
    write_timestamp(ms, &mut out);
    String::from_utf8_lossy(&out[1..out.len() - 1]).into_owned()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{DataType, Field, Schema, TimeUnit, TimestampMillisecondType};

    use super::*;
    use crate::nexmark::{EventKind, Generator, NexmarkConfig};

    #[test]
    fn timestamps_match_rfc3339_for_many_instants() {
        let instants = [
            0i64,
            1,
            999,
            1_436_918_400_000,
            1_436_918_400_001,
            951_782_400_000 - 1, // 2000-02-28T23:59:59.999
            951_868_800_000,     // 2000-03-01
            4_102_444_800_000,   // 2100-01-01
            1_700_000_123_456,
        ];
        let more = (0..2000).map(|i| i * 7_919_137_777i64 % 8_000_000_000_000);
        for ms in instants.into_iter().chain(more) {
            let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms as u64);
            let expected = humantime::format_rfc3339_millis(t)
                .to_string()
                .trim_end_matches('Z')
                .replacen('T', " ", 1);
            assert_eq!(format_timestamp(ms), expected, "{ms}");
        }
        assert_eq!(format_timestamp(-1), "1969-12-31 23:59:59.999");
    }

    #[test]
    fn strings_and_numbers_are_valid_json() {
        let mut out = Vec::new();
        write_str("a \"quoted\" \\ back\nslash é", &mut out);
        let back: String = serde_json::from_slice(&out).unwrap();
        assert_eq!(back, "a \"quoted\" \\ back\nslash é");
        for v in [0, 7, -7, 1000, i64::MAX, i64::MIN] {
            out.clear();
            write_int(v, &mut out);
            assert_eq!(serde_json::from_slice::<i64>(&out).unwrap(), v);
        }
    }

    #[test]
    fn events_are_json_objects_with_the_risingwave_fields() {
        let g = Generator::new(NexmarkConfig::default());
        let mut seen = [false; 3];
        for n in 0..200 {
            let event = g.event(n);
            let mut out = Vec::new();
            write_event(&event, &mut out);
            let value: serde_json::Value = serde_json::from_slice(&out).unwrap();
            let keys: Vec<&str> = value
                .as_object()
                .unwrap()
                .keys()
                .map(|k| k.as_str())
                .collect();
            let mut expected: Vec<&str> = match event.kind() {
                EventKind::Person => vec![
                    "id",
                    "name",
                    "email_address",
                    "credit_card",
                    "city",
                    "state",
                    "date_time",
                    "extra",
                ],
                EventKind::Auction => vec![
                    "id",
                    "item_name",
                    "description",
                    "initial_bid",
                    "reserve",
                    "date_time",
                    "expires",
                    "seller",
                    "category",
                    "extra",
                ],
                EventKind::Bid => {
                    vec![
                        "auction",
                        "bidder",
                        "price",
                        "channel",
                        "url",
                        "date_time",
                        "extra",
                    ]
                }
            };
            let mut keys_sorted = keys.clone();
            keys_sorted.sort_unstable();
            expected.sort_unstable();
            assert_eq!(keys_sorted, expected, "{}", String::from_utf8_lossy(&out));
            assert_eq!(
                value["date_time"].as_str().unwrap(),
                format_timestamp(event.date_time())
            );
            seen[event.kind() as usize] = true;
            if let Event::Bid(b) = &event {
                assert_eq!(value["auction"].as_i64(), Some(b.auction));
                assert_eq!(value["price"].as_i64(), Some(b.price));
                assert_eq!(value["url"].as_str(), Some(b.url));
            }
        }
        assert_eq!(seen, [true; 3]);
    }

    /// The SQL layer decodes JSON with arrow-json: `date_time` and
    /// `expires` must arrive as millisecond timestamps, not be rejected.
    #[test]
    fn arrow_json_reads_the_timestamps_as_milliseconds() {
        let g = Generator::new(NexmarkConfig {
            rate: 1000, // a millisecond per event, so timestamps differ
            ..NexmarkConfig::default()
        });
        let ts = DataType::Timestamp(TimeUnit::Millisecond, None);
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("date_time", ts.clone(), true),
            Field::new("expires", ts, true),
        ]));
        let mut decoder = arrow::json::ReaderBuilder::new(schema)
            .build_decoder()
            .unwrap();
        let auctions: Vec<_> = (1..200)
            .filter(|&n| EventKind::of(n) == EventKind::Auction)
            .map(|n| match g.event(n) {
                Event::Auction(a) => a,
                _ => unreachable!(),
            })
            .collect();
        for a in &auctions {
            let mut out = Vec::new();
            write_auction(a, &mut out);
            out.push(b'\n');
            decoder.decode(&out).unwrap();
        }
        let batch = decoder.flush().unwrap().unwrap();
        assert_eq!(batch.num_rows(), auctions.len());
        let date_time = batch.column(1).as_primitive::<TimestampMillisecondType>();
        let expires = batch.column(2).as_primitive::<TimestampMillisecondType>();
        assert_eq!(date_time.null_count(), 0);
        for (i, a) in auctions.iter().enumerate() {
            assert_eq!(date_time.value(i), a.date_time);
            assert_eq!(expires.value(i), a.expires);
        }
    }
}
