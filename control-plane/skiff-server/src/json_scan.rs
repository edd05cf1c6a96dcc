//! Finding one place in an encoded JSON object without parsing it into a tree.
//!
//! The watch cache stamps `metadata.resourceVersion` into every object it receives; a
//! scanner that only skips over values finds where it goes with a look at each byte, where a
//! parse and re-encode allocates the whole object twice.

/// Where `metadata.resourceVersion` of `raw`, a JSON object, is or can be put: its value
/// when it has one, else just inside the opening brace of the top-level `metadata` object.
/// `None` if `raw` is not an object, has no `metadata` object, or is not well formed as far
/// as the scan reads.
pub fn resource_version_spot(raw: &[u8]) -> Option<Spot> {
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
            if !empty {
                if let Some(value) = s.value_of_key(b"resourceVersion")? {
                    return Some(Spot::Replace(value));
                }
            }
            return Some(Spot::Insert { at, empty });
        }
        s.value()?;
        s.skip_ws();
        match s.next()? {
            b',' => continue,
            _ => return None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Spot {
    /// No resourceVersion yet: insert `"resourceVersion":"…"` at byte `at`, just after
    /// `metadata`'s opening brace, followed by a comma unless `metadata` is `empty`.
    Insert { at: usize, empty: bool },
    /// The bytes of the current value (with its quotes, if a string).
    Replace(std::ops::Range<usize>),
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

    /// The byte range of the value of `wanted` in the object whose first key is at the
    /// cursor, `Some(None)` if it has no such key; the cursor is left inside the object.
    fn value_of_key(&mut self, wanted: &[u8]) -> Option<Option<std::ops::Range<usize>>> {
        loop {
            self.skip_ws();
            let key = self.string()?;
            self.expect(b':')?;
            self.skip_ws();
            let start = self.i;
            self.value()?;
            if key == wanted {
                return Some(Some(start..self.i));
            }
            self.skip_ws();
            match self.next()? {
                b',' => {}
                b'}' => return Some(None),
                _ => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(raw: &str) -> Option<Spot> {
        resource_version_spot(raw.as_bytes())
    }

    #[test]
    fn finds_the_top_level_metadata_after_values_of_every_kind() {
        let raw = r#"{"a":"x\"}{","n":-1.5e3,"t":true,"z":null,"arr":[{"metadata":{}},"]"],"o":{"metadata":{"q":1}},"metadata":{"name":"p"},"spec":{}}"#;
        let at = raw.find(r#""metadata":{"name""#).unwrap() + r#""metadata":{"#.len();
        assert_eq!(point(raw), Some(Spot::Insert { at, empty: false }));
    }

    #[test]
    fn empty_metadata_and_whitespace() {
        let raw = "{ \"kind\" : \"Pod\" ,\n \"metadata\" : { } }";
        let at = raw.find("{ }").unwrap() + 1;
        assert_eq!(point(raw), Some(Spot::Insert { at, empty: true }));
    }

    #[test]
    fn an_existing_value_is_found_for_replacement() {
        let raw = r#"{"metadata":{"name":"a","resourceVersion":"31","uid":"u"}}"#;
        let start = raw.find(r#""31""#).unwrap();
        assert_eq!(point(raw), Some(Spot::Replace(start..start + 4)));
        let raw = r#"{"metadata":{"resourceVersion" : 7 }}"#;
        let start = raw.find('7').unwrap();
        assert_eq!(point(raw), Some(Spot::Replace(start..start + 1)));
    }

    #[test]
    fn refuses_what_it_must_not_splice() {
        for raw in [
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
        let at = raw.find(r#""metadata":{"#).unwrap() + r#""metadata":{"#.len();
        assert_eq!(point(raw), Some(Spot::Insert { at, empty: false }));
        let raw = r#"{"metadata\u0000":{},"metadata":{"name":"a"}}"#;
        let at = raw.rfind(r#""metadata":{"#).unwrap() + r#""metadata":{"#.len();
        assert_eq!(point(raw), Some(Spot::Insert { at, empty: false }));
    }
}
