//! A batch's reserve op in the shape clients send, read straight off its bytes.
//!
//! `{"op":"reserve","lines":[{"sku":"S1","qty":1}]}` through serde costs about 2.8k
//! instructions per op (callgrind; BENCHMARKS.md, "a batch's reserve ops without serde").
//! Most of a `/v1/batch` request is such ops, so they are read here by a scanner that
//! takes only a strict subset of JSON: the fields `op`, `lines`, `ttl_ms` and
//! `customer_id`, each at most once, in any order; lines with exactly `sku` and
//! `qty`; strings without escapes or control characters; integers without sign,
//! fraction, exponent or leading zero that fit a `u64`. Anything else (`null`, an
//! unknown or repeated field, an escape, a missing `lines`, a malformed body) gives
//! `None`, and the op goes through serde as before, which accepts or refuses it
//! with the same error as ever. What this reads, serde reads the same (a test holds
//! the two equal over generated ops).

/// A reserve op's fields, borrowed from the op's text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlainReserve<'a> {
    pub lines: Vec<(&'a str, u64)>,
    pub ttl_ms: Option<u64>,
    pub customer_id: Option<&'a str>,
}

/// `text` (one op of a batch, its `op` already known to be `reserve`) read as a
/// reserve op, or `None` when it is not in the plain subset this reads.
pub fn plain_reserve(text: &str) -> Option<PlainReserve<'_>> {
    let mut at = Cursor { text, at: 0 };
    let op = at.reserve_op()?;
    at.end()?;
    Some(op)
}

/// A whole `/v1/batch` body whose every op is a plain reserve op
/// (`{"ops":[<op>,...]}`, nothing else in it), or `None` for any other body, which
/// then takes the general path. Such a body passes that path's checks (it is an
/// object, no array in it holds an array, `ops` is its only member, each op an
/// object named `reserve`), and each op reads as `plain_reserve` reads it alone; a
/// test holds the two paths equal over generated bodies.
pub fn plain_reserve_batch(body: &str) -> Option<Vec<PlainReserve<'_>>> {
    let mut at = Cursor { text: body, at: 0 };
    at.expect(b'{')?;
    (at.string()? == "ops").then_some(())?;
    at.expect(b':')?;
    at.expect(b'[')?;
    let mut ops = Vec::new();
    if at.peek()? == b']' {
        at.at += 1;
    } else {
        loop {
            ops.push(at.reserve_op()?);
            if !at.separator(b']')? {
                break;
            }
        }
    }
    at.expect(b'}')?;
    at.end()?;
    Some(ops)
}

struct Cursor<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Cursor<'a> {
    /// One reserve op object, the cursor left after its closing brace.
    fn reserve_op(&mut self) -> Option<PlainReserve<'a>> {
        self.expect(b'{')?;
        let (mut op, mut lines, mut ttl_ms, mut customer_id) = (false, None, None, None);
        loop {
            match self.string()? {
                "op" if !op => {
                    self.expect(b':')?;
                    (self.string()? == "reserve").then_some(())?;
                    op = true;
                }
                "lines" if lines.is_none() => {
                    self.expect(b':')?;
                    lines = Some(self.lines()?);
                }
                "ttl_ms" if ttl_ms.is_none() => {
                    self.expect(b':')?;
                    ttl_ms = Some(self.number()?);
                }
                "customer_id" if customer_id.is_none() => {
                    self.expect(b':')?;
                    customer_id = Some(self.string()?);
                }
                _ => return None,
            }
            if !self.separator(b'}')? {
                break;
            }
        }
        op.then_some(())?;
        Some(PlainReserve {
            lines: lines?,
            ttl_ms,
            customer_id,
        })
    }

    /// Nothing but whitespace is left.
    fn end(&mut self) -> Option<()> {
        self.skip_whitespace();
        (self.at == self.text.len()).then_some(())
    }

    fn skip_whitespace(&mut self) {
        let bytes = self.text.as_bytes();
        while matches!(bytes.get(self.at), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip_whitespace();
        self.text.as_bytes().get(self.at).copied()
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        (self.peek()? == byte).then(|| self.at += 1)
    }

    /// After a member or an element: `true` on `,` (another follows), `false` on
    /// `close`, `None` on anything else.
    fn separator(&mut self, close: u8) -> Option<bool> {
        match self.peek()? {
            b',' => {
                self.at += 1;
                Some(true)
            }
            b if b == close => {
                self.at += 1;
                Some(false)
            }
            _ => None,
        }
    }

    /// A string without escapes or control characters, as it stands in the text.
    fn string(&mut self) -> Option<&'a str> {
        self.expect(b'"')?;
        let bytes = self.text.as_bytes();
        let start = self.at;
        let mut end = start;
        loop {
            match *bytes.get(end)? {
                b'"' => break,
                b'\\' | 0..0x20 => return None,
                _ => end += 1,
            }
        }
        self.at = end + 1;
        // Cut at ASCII bytes, so on character boundaries.
        self.text.get(start..end)
    }

    /// A non-negative integer that fits a `u64`, in JSON's form (no leading zero),
    /// not followed by a fraction or an exponent.
    fn number(&mut self) -> Option<u64> {
        self.skip_whitespace();
        let bytes = self.text.as_bytes();
        let digits = bytes[self.at..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        let text = &bytes[self.at..self.at + digits];
        if digits == 0 || (digits > 1 && text[0] == b'0') {
            return None;
        }
        let value = text.iter().try_fold(0u64, |value, &digit| {
            value.checked_mul(10)?.checked_add(u64::from(digit - b'0'))
        })?;
        self.at += digits;
        match bytes.get(self.at) {
            Some(b'.' | b'e' | b'E') => None,
            _ => Some(value),
        }
    }

    /// `[{"sku":"...","qty":N}, ...]`, `sku` and `qty` each exactly once.
    fn lines(&mut self) -> Option<Vec<(&'a str, u64)>> {
        self.expect(b'[')?;
        let mut lines = Vec::new();
        if self.peek()? == b']' {
            self.at += 1;
            return Some(lines);
        }
        loop {
            self.expect(b'{')?;
            let (mut sku, mut qty) = (None, None);
            loop {
                match self.string()? {
                    "sku" if sku.is_none() => {
                        self.expect(b':')?;
                        sku = Some(self.string()?);
                    }
                    "qty" if qty.is_none() => {
                        self.expect(b':')?;
                        qty = Some(self.number()?);
                    }
                    _ => return None,
                }
                if !self.separator(b'}')? {
                    break;
                }
            }
            lines.push((sku?, qty?));
            if !self.separator(b']')? {
                return Some(lines);
            }
        }
    }
}

/// What the reader's tests and the batch's share: owned readings to compare, and
/// the random edits that take generated text near the edge of the plain subset.
#[cfg(test)]
pub(crate) mod testing {
    use rand_core::Rng as _;
    use rand_xoshiro::Xoshiro256StarStar;

    use super::PlainReserve;

    /// The JSON punctuation and a reserve op's member names: pieces that random edits
    /// insert into generated text (each test adds its own values).
    pub const OP_PIECES: [&str; 13] = [
        "{",
        "}",
        "[",
        "]",
        ",",
        ":",
        " ",
        "\"op\"",
        "\"reserve\"",
        "\"lines\"",
        "\"sku\"",
        "\"qty\"",
        "\"ttl_ms\"",
    ];

    /// A reserve op's lines, `ttl_ms` and `customer_id`, owned.
    pub type Owned = (Vec<(String, u64)>, Option<u64>, Option<String>);

    pub fn owned(op: &PlainReserve<'_>) -> Owned {
        let lines = op.lines.iter().map(|&(s, q)| (s.to_string(), q)).collect();
        (lines, op.ttl_ms, op.customer_id.map(str::to_string))
    }

    /// Fewer than `edits_max` edits of `text`: each a byte removed or one of
    /// `pieces` inserted, anywhere.
    pub fn edit(rng: &mut Xoshiro256StarStar, text: &mut String, edits_max: u32, pieces: &[&str]) {
        for _ in 0..rng.next_u32() % edits_max {
            let at = (rng.next_u32() as usize) % (text.len() + 1);
            if !text.is_char_boundary(at) {
                continue;
            }
            if rng.next_u32().is_multiple_of(3) && at < text.len() {
                text.remove(at);
            } else {
                text.insert_str(at, pieces[rng.next_u32() as usize % pieces.len()]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use rand_core::{Rng as _, SeedableRng};
    use rand_xoshiro::Xoshiro256StarStar;
    use serde::Deserialize;

    use super::testing::{OP_PIECES, Owned, edit, owned};
    use super::*;

    /// What serde makes of the same text: the reference this reader must match.
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct SerdeReserve {
        #[serde(rename = "op")]
        _op: String,
        lines: Vec<SerdeLine>,
        ttl_ms: Option<u64>,
        customer_id: Option<String>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct SerdeLine {
        sku: String,
        qty: u64,
    }

    fn by_serde(text: &str) -> Option<Owned> {
        let op: SerdeReserve = serde_json::from_str(text).ok()?;
        (op._op == "reserve").then_some(())?;
        let lines = op.lines.into_iter().map(|l| (l.sku, l.qty)).collect();
        Some((lines, op.ttl_ms, op.customer_id))
    }

    #[test]
    fn the_shapes_clients_send_are_read() {
        for (text, lines, ttl_ms, customer) in [
            (
                r#"{"op":"reserve","lines":[{"sku":"S1","qty":1}]}"#,
                vec![("S1", 1)],
                None,
                None,
            ),
            (
                " {\n \"op\" : \"reserve\", \"ttl_ms\": 60000, \"customer_id\": \"c-7\",\n \"lines\": [ {\"qty\": 2, \"sku\": \"A\"}, {\"sku\":\"B\",\"qty\":18446744073709551615} ] }\n",
                vec![("A", 2), ("B", u64::MAX)],
                Some(60_000),
                Some("c-7"),
            ),
            (r#"{"op":"reserve","lines":[]}"#, vec![], None, None),
            (
                r#"{"lines":[{"sku":"ünï","qty":0}],"op":"reserve"}"#,
                vec![("ünï", 0)],
                None,
                None,
            ),
        ] {
            let read = plain_reserve(text).unwrap_or_else(|| panic!("not read: {text}"));
            assert_eq!(
                read,
                PlainReserve {
                    lines,
                    ttl_ms,
                    customer_id: customer
                },
                "{text}"
            );
            assert_eq!(Some(owned(&read)), by_serde(text), "{text}");
        }
    }

    #[test]
    fn anything_outside_the_plain_subset_is_left_to_serde() {
        for text in [
            r#"{"op":"reserve","lines":[{"sku":"S\u0031","qty":1}]}"#,
            r#"{"op":"reserve","lines":[{"sku":"S1","qty":1}],"ttl_ms":null}"#,
            r#"{"op":"reserve","lines":[{"sku":"S1","qty":1}],"extra":1}"#,
            r#"{"op":"reserve","lines":[{"sku":"S1","qty":1}],"lines":[]}"#,
            r#"{"op":"reserve","lines":[{"sku":"S1","qty":1,"qty":2}]}"#,
            r#"{"op":"reserve","lines":[{"sku":"S1","qty":01}]}"#,
            r#"{"op":"reserve","lines":[{"sku":"S1","qty":1.0}]}"#,
            r#"{"op":"reserve","lines":[{"sku":"S1","qty":1e3}]}"#,
            r#"{"op":"reserve","lines":[{"sku":"S1","qty":-1}]}"#,
            r#"{"op":"reserve","lines":[{"sku":"S1","qty":18446744073709551616}]}"#,
            r#"{"op":"reserve","lines":[{"sku":"S1"}]}"#,
            r#"{"op":"reserve","lines":[{"sku":"S1","qty":1},]}"#,
            r#"{"op":"reserve","lines":[{"sku":"S1","qty":1}],}"#,
            r#"{"op":"reserve"}"#,
            r#"{"op":"release","lines":[]}"#,
            "{\"op\":\"reserve\",\"lines\":[{\"sku\":\"S\t1\",\"qty\":1}]}",
            r#"{"op":"reserve","lines":[{"sku":"S1","qty":1}]} x"#,
            r#"{"op":"reserve","lines":[{"sku":"S1","qty":1}]"#,
        ] {
            assert_eq!(plain_reserve(text), None, "{text}");
        }
    }

    /// Generated ops, most in the plain subset and many one edit away from it:
    /// whenever this reader takes one, serde takes it too and reads the same.
    #[test]
    fn what_is_read_is_what_serde_reads() {
        let mut rng = Xoshiro256StarStar::seed_from_u64(0x5eed_ba7c);
        let mut pieces = OP_PIECES.to_vec();
        pieces.extend([
            "\"customer_id\"",
            "\"S1\"",
            "\"\"",
            "0",
            "7",
            "01",
            "1.5",
            "-2",
            "null",
            "\"\\u0041\"",
            "\"x\"",
            "99999999999999999999",
        ]);
        let (mut read, mut total) = (0, 0);
        for _ in 0..200_000 {
            let mut text = String::from(r#"{"op":"reserve","lines":["#);
            let line_count = rng.next_u32() % 4;
            for i in 0..line_count {
                if i > 0 {
                    text.push(',');
                }
                text.push_str(&format!(
                    r#"{{"sku":"S{}","qty":{}}}"#,
                    rng.next_u32() % 100,
                    rng.next_u64() >> (rng.next_u32() % 64)
                ));
            }
            text.push(']');
            if rng.next_u32() % 2 == 0 {
                text.push_str(&format!(r#","ttl_ms":{}"#, rng.next_u32()));
            }
            if rng.next_u32() % 2 == 0 {
                text.push_str(r#","customer_id":"c-1""#);
            }
            text.push('}');
            // Up to three edits.
            edit(&mut rng, &mut text, 4, &pieces);
            total += 1;
            if let Some(op) = plain_reserve(&text) {
                read += 1;
                assert_eq!(Some(owned(&op)), by_serde(&text), "{text}");
            }
        }
        // The generator must reach both sides: most unedited ops are read.
        assert!(read > total / 5 && read < total, "{read} of {total} read");
    }
}
