//! Finding one place in an encoded JSON object without parsing it into a tree.
//!
//! The watch cache stamps `metadata.resourceVersion` into every object it receives; a
//! scanner that only skips over values finds where to put it for a few bytes of work per
//! byte, where a parse and re-encode allocates the whole object twice.

/// Where `"resourceVersion":"…"` can be inserted into `raw`, a JSON object: just inside the
/// opening brace of its top-level `metadata` object. `None` if `raw` is not an object, has no
/// `metadata` object, already has a `metadata.resourceVersion`, or is not well formed as far
/// as the scan reads.
pub fn metadata_insert_point(raw: &[u8]) -> Option<InsertPoint> {
    let mut s = Scanner { b: raw, i: 0 };
    s.expect(b'{')?;
    loop {
        s.skip_ws();
        if s.peek()? == b'}' {
            return None;
        }
        let key = s.string()?;
        s.expect(b':')?;
        s.skip_ws();
        if key == b"metadata" {
            s.expect(b'{')?;
            let at = s.i;
            s.skip_ws();
            let empty = s.peek()? == b'}';
            // The stored form never has one; if it does, the parsing path replaces it.
            if !empty && s.object_has_key(b"resourceVersion")? {
                return None;
            }
            return Some(InsertPoint { at, empty });
        }
        s.value()?;
        s.skip_ws();
        match s.next()? {
            b',' => continue,
            _ => return None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InsertPoint {
    /// Byte offset just after `metadata`'s opening brace.
    pub at: usize,
    /// `metadata` has no fields, so the inserted one needs no trailing comma.
    pub empty: bool,
}

struct Scanner<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Scanner<'a> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.i += 1;
        Some(c)
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    fn expect(&mut self, c: u8) -> Option<()> {
        self.skip_ws();
        (self.next()? == c).then_some(())
    }

    /// A string at the cursor; returns its raw bytes between the quotes (escapes untouched).
    fn string(&mut self) -> Option<&'a [u8]> {
        if self.next()? != b'"' {
            return None;
        }
        let start = self.i;
        loop {
            match self.next()? {
                b'"' => return Some(&self.b[start..self.i - 1]),
                b'\\' => {
                    self.next()?;
                }
                _ => {}
            }
        }
    }

    /// Skips one value of any kind.
    fn value(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => self.string().map(|_| ()),
            b'{' | b'[' => {
                let mut depth = 0usize;
                loop {
                    match self.peek()? {
                        b'"' => {
                            self.string()?;
                            continue;
                        }
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' => depth -= 1,
                        _ => {}
                    }
                    self.i += 1;
                    if depth == 0 {
                        return Some(());
                    }
                }
            }
            _ => {
                let start = self.i;
                while !matches!(
                    self.peek(),
                    None | Some(b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')
                ) {
                    self.i += 1;
                }
                (self.i > start).then_some(())
            }
        }
    }

    /// Whether the object whose first key is at the cursor has `wanted` among its keys; the
    /// cursor is left somewhere inside it.
    fn object_has_key(&mut self, wanted: &[u8]) -> Option<bool> {
        loop {
            self.skip_ws();
            let key = self.string()?;
            if key == wanted {
                return Some(true);
            }
            self.expect(b':')?;
            self.skip_ws();
            self.value()?;
            self.skip_ws();
            match self.next()? {
                b',' => {}
                b'}' => return Some(false),
                _ => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(raw: &str) -> Option<InsertPoint> {
        metadata_insert_point(raw.as_bytes())
    }

    #[test]
    fn finds_the_top_level_metadata_after_values_of_every_kind() {
        let raw = r#"{"a":"x\"}{","n":-1.5e3,"t":true,"z":null,"arr":[{"metadata":{}},"]"],"o":{"metadata":{"q":1}},"metadata":{"name":"p"},"spec":{}}"#;
        let at = raw.find(r#""metadata":{"name""#).unwrap() + r#""metadata":{"#.len();
        assert_eq!(point(raw), Some(InsertPoint { at, empty: false }));
    }

    #[test]
    fn empty_metadata_and_whitespace() {
        let raw = "{ \"kind\" : \"Pod\" ,\n \"metadata\" : { } }";
        let at = raw.find("{ }").unwrap() + 1;
        assert_eq!(point(raw), Some(InsertPoint { at, empty: true }));
    }

    #[test]
    fn refuses_what_it_must_not_splice() {
        for raw in [
            r#"{"metadata":{"name":"a","resourceVersion":"3"}}"#,
            r#"{"kind":"Pod"}"#,
            r#"{"metadata":"x"}"#,
            r#"{"metadata":null}"#,
            r#"["metadata",{}]"#,
            r#"{"a":1 "metadata":{}}"#,
            r#"{"a":"unterminated"#,
            r#"{"metadata":{"name":"unterminated"#,
            "",
        ] {
            assert_eq!(point(raw), None, "{raw}");
        }
    }

    #[test]
    fn a_key_that_only_contains_the_word_is_not_it() {
        let raw = r#"{"x":{"resourceVersion":"1"},"metadata":{"labels":{"resourceVersion":"2"},"name":"a"}}"#;
        assert!(point(raw).is_some());
        let raw = r#"{"metadata\u0000":{},"metadata":{"name":"a"}}"#;
        let at = raw.rfind(r#""metadata":{"#).unwrap() + r#""metadata":{"#.len();
        assert_eq!(point(raw).map(|p| p.at), Some(at));
    }
}
