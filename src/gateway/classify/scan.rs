//! One pass over a request body's JSON that finds where the classifier's top-level members lie
//! (`model`, `stream`, `max_tokens`, `max_completion_tokens`, `prompt`, `messages`, `input`)
//! and checks the rest is well-formed, without building a tree, decoding strings or copying.
//! Fed piece by piece as the body arrives ([`Scanner::feed`]), so each byte is looked at
//! while it is still in cache from the socket read; a piece may end anywhere, even inside an
//! escape or a UTF-8 sequence.
//!
//! The scan only ever answers "these are the members" or "leave it to the full parser": it
//! gives up on anything malformed and on well-formed bodies it does not handle (a top-level
//! array, an escaped top-level key, a duplicate member, nesting deeper than 127), and the
//! caller then parses with serde_json, whose answer (and error message) stands. So a body the
//! scan accepts must be one serde_json accepts with the same members; the `classify` fuzz
//! target checks exactly that.
//!
//! Strings — nearly all of a long prompt's bytes — are skipped 64 bytes at a time: SSE2 (the
//! x86-64 baseline, through `safe_arch`) gives one bit per byte for quotes, backslashes and
//! control characters, and escapes are resolved on those bit masks (the simdjson method), so
//! a prompt full of `\n` and `\"` costs no more than plain text. A long run with neither
//! quote nor backslash goes to `memchr` (AVX2 where the CPU has it).

use std::ops::Range;

use super::media;

/// The top-level members the classifier reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Model,
    Stream,
    MaxTokens,
    MaxCompletionTokens,
    Prompt,
    Messages,
    Input,
}

const FIELDS: usize = 7;

impl Field {
    fn of_key(key: &[u8]) -> Option<Field> {
        Some(match key {
            b"model" => Field::Model,
            b"stream" => Field::Stream,
            b"max_tokens" => Field::MaxTokens,
            b"max_completion_tokens" => Field::MaxCompletionTokens,
            b"prompt" => Field::Prompt,
            b"messages" => Field::Messages,
            b"input" => Field::Input,
            _ => return None,
        })
    }
}

/// The scan gave up: the body is malformed, or well-formed in a way it leaves to serde_json.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GaveUp;

/// Where each member's value lies in the body (byte offsets from its start), null included.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Members {
    spans: [Option<Range<usize>>; FIELDS],
    /// The string values of `prompt`, `messages` and `input` at least
    /// [`media::MIN_MEDIA_BYTES`] long, between their quotes: where inline media may be.
    long_strings: Vec<Range<usize>>,
}

impl Members {
    pub fn get(&self, field: Field) -> Option<Range<usize>> {
        self.spans[field as usize].clone()
    }

    pub fn long_strings(&self) -> &[Range<usize>] {
        &self.long_strings
    }
}

/// Deepest nesting the scan follows; deeper bodies go to serde_json (which accepts them
/// inside values it skips).
const MAX_DEPTH: u32 = 127;
/// Longest top-level key compared against the members' names (`max_completion_tokens`).
const KEY_BYTES: usize = 24;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before the top-level value.
    Start,
    /// A value is expected (after `:` or an array's `,`).
    Value,
    /// After `[`: a value or `]`.
    FirstElement,
    /// After `{`: a key or `}`.
    FirstKey,
    /// After an object's `,`: a key.
    Key,
    /// After a key: `:`.
    Colon,
    /// After a value: `,` or the container's end.
    Next,
    /// Inside a top-level key (read into `key`).
    TopKey,
    /// Inside any other string: a key below the top (`true`) or a value (`false`).
    Str {
        key: bool,
    },
    Number(Num),
    /// Inside `true`, `false` or `null`: the letters still to come.
    Literal(&'static [u8]),
    /// After the top-level object: whitespace only.
    End,
}

/// Where a number is in JSON's grammar: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Num {
    Minus,
    Zero,
    Int,
    Dot,
    Frac,
    Exp,
    ExpSign,
    ExpDigits,
}

impl Num {
    fn complete(self) -> bool {
        matches!(self, Num::Zero | Num::Int | Num::Frac | Num::ExpDigits)
    }

    /// The state after `c`, or None when `c` does not continue the number.
    fn step(self, c: u8) -> Option<Num> {
        let digit = c.is_ascii_digit();
        Some(match (self, c) {
            (Num::Minus, b'0') => Num::Zero,
            (Num::Minus, _) if digit => Num::Int,
            (Num::Int, _) if digit => Num::Int,
            (Num::Zero | Num::Int, b'.') => Num::Dot,
            (Num::Dot | Num::Frac, _) if digit => Num::Frac,
            (Num::Zero | Num::Int | Num::Frac, b'e' | b'E') => Num::Exp,
            (Num::Exp, b'+' | b'-') => Num::ExpSign,
            (Num::Exp | Num::ExpSign | Num::ExpDigits, _) if digit => Num::ExpDigits,
            _ => return None,
        })
    }
}

pub struct Scanner {
    /// Bytes fed before the current piece.
    offset: usize,
    state: State,
    depth: u32,
    /// Bit `d` is set when the container at depth `d + 1` is an object.
    objects: u128,
    /// Inside a string: the next byte is escaped by a backslash.
    escaped: bool,
    /// Inside a string: hex digits of a `\u` escape still to come.
    hex_left: u8,
    /// The top-level key being read, and its length (past `KEY_BYTES`: no member's).
    key: [u8; KEY_BYTES],
    key_len: usize,
    /// The member whose value comes next or is being scanned, and where it started.
    member: Option<Field>,
    value_start: usize,
    /// Where the string value being scanned began (past its quote).
    string_start: usize,
    members: Members,
    /// The last piece's bytes of a UTF-8 sequence it cut, to be finished by the next piece.
    utf8_carry: [u8; 4],
    utf8_carried: usize,
    failed: bool,
}

impl Default for Scanner {
    fn default() -> Self {
        Self::new()
    }
}

impl Scanner {
    pub fn new() -> Self {
        Self {
            offset: 0,
            state: State::Start,
            depth: 0,
            objects: 0,
            escaped: false,
            hex_left: 0,
            key: [0; KEY_BYTES],
            key_len: 0,
            member: None,
            value_start: 0,
            string_start: 0,
            members: Members::default(),
            utf8_carry: [0; 4],
            utf8_carried: 0,
            failed: false,
        }
    }

    /// Scans the next piece of the body. After a failure the rest is ignored.
    pub fn feed(&mut self, piece: &[u8]) {
        if self.failed {
            return;
        }
        match self.scan(piece) {
            Ok(non_ascii) => {
                // Only strings may hold non-ASCII bytes (anywhere else they failed the scan),
                // and a body whose bytes are all ASCII is valid UTF-8.
                if (non_ascii || self.utf8_carried > 0) && self.check_utf8(piece).is_err() {
                    self.failed = true;
                }
            }
            Err(GaveUp) => self.failed = true,
        }
        self.offset += piece.len();
    }

    /// The members found, once the whole body was fed.
    pub fn finish(self) -> Result<Members, GaveUp> {
        if self.failed || self.state != State::End || self.utf8_carried > 0 {
            return Err(GaveUp);
        }
        Ok(self.members)
    }

    /// Scans `piece`; true when one of its strings had a non-ASCII byte.
    fn scan(&mut self, piece: &[u8]) -> Result<bool, GaveUp> {
        let mut non_ascii = false;
        let mut i = 0;
        while i < piece.len() {
            let c = piece[i];
            match self.state {
                State::Str { key } => match self.skip_string(piece, i, &mut non_ascii)? {
                    Some(quote) => {
                        i = quote + 1;
                        if key {
                            self.state = State::Colon;
                        } else {
                            let end = self.offset + quote;
                            if end - self.string_start >= media::MIN_MEDIA_BYTES
                                && matches!(
                                    self.member,
                                    Some(Field::Prompt | Field::Messages | Field::Input)
                                )
                            {
                                self.members.long_strings.push(self.string_start..end);
                            }
                            self.value_done(self.offset + i);
                        }
                    }
                    None => i = piece.len(),
                },
                State::TopKey => {
                    if c == b'"' {
                        self.member = Field::of_key(&self.key[..self.key_len]);
                        self.state = State::Colon;
                    } else if c == b'\\' {
                        // `"mod\u0065l"` is `model` to serde: leave decoding keys to it.
                        return Err(GaveUp);
                    } else if c < 0x20 {
                        return Err(GaveUp);
                    } else {
                        non_ascii |= c >= 0x80;
                        if self.key_len < KEY_BYTES {
                            self.key[self.key_len] = c;
                        }
                        self.key_len = self.key_len.saturating_add(1);
                        if self.key_len > KEY_BYTES {
                            // No member's name is this long: skip the rest as any string.
                            self.state = State::Str { key: true };
                        }
                    }
                    i += 1;
                }
                State::Number(num) => match num.step(c) {
                    Some(next) => {
                        self.state = State::Number(next);
                        i += 1;
                    }
                    None if num.complete() => {
                        // `c` is looked at again as what follows the number.
                        self.value_done(self.offset + i);
                    }
                    None => return Err(GaveUp),
                },
                State::Literal(rest) => {
                    if c != rest[0] {
                        return Err(GaveUp);
                    }
                    i += 1;
                    if rest.len() == 1 {
                        self.value_done(self.offset + i);
                    } else {
                        self.state = State::Literal(&rest[1..]);
                    }
                }
                _ if is_whitespace(c) => i += 1,
                State::Start => {
                    if c != b'{' {
                        // Top-level arrays and scalars: serde decides.
                        return Err(GaveUp);
                    }
                    self.open(true)?;
                    self.state = State::FirstKey;
                    i += 1;
                }
                State::Value | State::FirstElement => {
                    if self.state == State::FirstElement && c == b']' {
                        self.close(false, i)?;
                    } else {
                        self.begin_value(c, i)?;
                    }
                    i += 1;
                }
                State::FirstKey | State::Key => {
                    match c {
                        b'"' if self.depth == 1 => {
                            self.key_len = 0;
                            self.member = None;
                            self.state = State::TopKey;
                        }
                        b'"' => self.state = State::Str { key: true },
                        b'}' if self.state == State::FirstKey => self.close(true, i)?,
                        _ => return Err(GaveUp),
                    }
                    i += 1;
                }
                State::Colon => {
                    if c != b':' {
                        return Err(GaveUp);
                    }
                    if self.depth == 1
                        && let Some(field) = self.member
                        && self.members.spans[field as usize].is_some()
                    {
                        // serde's "duplicate field": its message, not ours.
                        return Err(GaveUp);
                    }
                    self.state = State::Value;
                    i += 1;
                }
                State::Next => {
                    let in_object = self.in_object();
                    match c {
                        b',' if in_object => self.state = State::Key,
                        b',' => self.state = State::Value,
                        b'}' if in_object => self.close(true, i)?,
                        b']' if !in_object => self.close(false, i)?,
                        _ => return Err(GaveUp),
                    }
                    i += 1;
                }
                State::End => return Err(GaveUp),
            }
        }
        Ok(non_ascii)
    }

    fn in_object(&self) -> bool {
        self.depth > 0 && self.objects & (1 << (self.depth - 1)) != 0
    }

    /// The first byte `c` (at `i` in the piece) of a value.
    fn begin_value(&mut self, c: u8, i: usize) -> Result<(), GaveUp> {
        if self.depth == 1 {
            self.value_start = self.offset + i;
        }
        self.state = match c {
            b'"' => {
                self.string_start = self.offset + i + 1;
                State::Str { key: false }
            }
            b'{' => {
                self.open(true)?;
                State::FirstKey
            }
            b'[' => {
                self.open(false)?;
                State::FirstElement
            }
            b'-' => State::Number(Num::Minus),
            b'0' => State::Number(Num::Zero),
            b'1'..=b'9' => State::Number(Num::Int),
            b't' => State::Literal(b"rue"),
            b'f' => State::Literal(b"alse"),
            b'n' => State::Literal(b"ull"),
            _ => return Err(GaveUp),
        };
        Ok(())
    }

    fn open(&mut self, object: bool) -> Result<(), GaveUp> {
        if self.depth >= MAX_DEPTH {
            return Err(GaveUp);
        }
        if object {
            self.objects |= 1 << self.depth;
        } else {
            self.objects &= !(1 << self.depth);
        }
        self.depth += 1;
        Ok(())
    }

    /// The container ends with the byte at `i`.
    fn close(&mut self, object: bool, i: usize) -> Result<(), GaveUp> {
        if self.in_object() != object {
            return Err(GaveUp);
        }
        self.depth -= 1;
        if self.depth == 0 {
            self.state = State::End;
        } else {
            self.value_done(self.offset + i + 1);
        }
        Ok(())
    }

    /// A value ended just before body offset `end`.
    fn value_done(&mut self, end: usize) {
        if self.depth == 1
            && let Some(field) = self.member.take()
        {
            self.members.spans[field as usize] = Some(self.value_start..end);
        }
        self.state = State::Next;
    }

    /// Skips string bytes from `i`: the index of the closing quote, or None when the piece
    /// ends first (the escape state is kept for the next piece).
    fn skip_string(
        &mut self,
        piece: &[u8],
        mut i: usize,
        non_ascii: &mut bool,
    ) -> Result<Option<usize>, GaveUp> {
        // An escape the previous piece cut.
        while self.hex_left > 0 {
            let Some(&c) = piece.get(i) else {
                return Ok(None);
            };
            if !c.is_ascii_hexdigit() {
                return Err(GaveUp);
            }
            self.hex_left -= 1;
            i += 1;
        }
        if self.escaped {
            let Some(&c) = piece.get(i) else {
                return Ok(None);
            };
            self.escaped = false;
            i = self.escape(piece, i, c)?;
        }
        let mut escape_carry = 0u64;
        // Blocks in a row with neither quote nor backslash: a long plain run.
        let mut plain = 0u32;
        while i + 64 <= piece.len() {
            if plain >= 2 {
                let window = &piece[i..piece.len().min(i + RUN_WINDOW)];
                let found = memchr::memchr2(b'"', b'\\', window);
                let run = found.unwrap_or(window.len());
                let (control, high) = control_or_high(&window[..run]);
                if control {
                    return Err(GaveUp);
                }
                *non_ascii |= high;
                i += run;
                if found.is_some() {
                    plain = 0;
                }
                continue;
            }
            let block: &[u8; 64] = piece[i..i + 64].try_into().expect("64 bytes");
            let m = masks(block);
            *non_ascii |= m.high != 0;
            if m.quote | m.backslash | escape_carry == 0 {
                if m.control != 0 {
                    return Err(GaveUp);
                }
                plain += 1;
                i += 64;
                continue;
            }
            plain = 0;
            let escaped = escaped_bytes(m.backslash, &mut escape_carry);
            let quotes = m.quote & !escaped;
            let end = quotes.trailing_zeros();
            let before = if end == 64 { u64::MAX } else { (1 << end) - 1 };
            if m.control & before != 0 {
                return Err(GaveUp);
            }
            let mut escapes = escaped & before;
            while escapes != 0 {
                let k = escapes.trailing_zeros() as usize;
                escapes &= escapes - 1;
                // Valid \u digits are no quote or backslash: the masks stay right.
                self.escape(piece, i + k, block[k])?;
            }
            if end < 64 {
                return Ok(Some(i + end as usize));
            }
            i += 64;
        }
        if escape_carry != 0 {
            // The last block ended on an escaping backslash.
            let Some(&c) = piece.get(i) else {
                self.escaped = true;
                return Ok(None);
            };
            i = self.escape(piece, i, c)?;
        }
        // The rest, under 64 bytes, one at a time; `i` may be past a \u escape's digits.
        while i < piece.len() {
            let c = piece[i];
            match c {
                b'"' => return Ok(Some(i)),
                b'\\' => {
                    let Some(&e) = piece.get(i + 1) else {
                        self.escaped = true;
                        return Ok(None);
                    };
                    i = self.escape(piece, i + 1, e)?;
                }
                0..0x20 => return Err(GaveUp),
                _ => {
                    *non_ascii |= c >= 0x80;
                    i += 1;
                }
            }
        }
        Ok(None)
    }

    /// Checks the escaped byte `c` at `i`; returns where the string goes on (past a `\u`'s
    /// digits, or the piece's end with the missing digits counted in `hex_left`).
    fn escape(&mut self, piece: &[u8], i: usize, c: u8) -> Result<usize, GaveUp> {
        match c {
            b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => Ok(i + 1),
            b'u' => {
                let digits = &piece[i + 1..piece.len().min(i + 5)];
                if !digits.iter().all(u8::is_ascii_hexdigit) {
                    return Err(GaveUp);
                }
                self.hex_left = (4 - digits.len()) as u8;
                Ok(i + 1 + digits.len())
            }
            _ => Err(GaveUp),
        }
    }

    /// Checks that `piece` (after what the previous piece cut) is UTF-8.
    fn check_utf8(&mut self, mut piece: &[u8]) -> Result<(), GaveUp> {
        if self.utf8_carried > 0 {
            let width = utf8_width(self.utf8_carry[0]);
            while self.utf8_carried < width && !piece.is_empty() {
                self.utf8_carry[self.utf8_carried] = piece[0];
                self.utf8_carried += 1;
                piece = &piece[1..];
            }
            if self.utf8_carried < width {
                return Ok(());
            }
            if std::str::from_utf8(&self.utf8_carry[..width]).is_err() {
                return Err(GaveUp);
            }
            self.utf8_carried = 0;
        }
        match simdutf8::compat::from_utf8(piece) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_none() => {
                // Cut at the piece's end: the next piece finishes it.
                let tail = &piece[e.valid_up_to()..];
                self.utf8_carry[..tail.len()].copy_from_slice(tail);
                self.utf8_carried = tail.len();
                Ok(())
            }
            Err(_) => Err(GaveUp),
        }
    }
}

/// Bytes a plain run is searched in at a time, so that it is still in L1 when checked for
/// control characters.
const RUN_WINDOW: usize = 4096;

fn is_whitespace(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r')
}

/// The length of the UTF-8 sequence a lead byte starts (1 for anything else: invalid then).
fn utf8_width(lead: u8) -> usize {
    match lead {
        0xC0..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF7 => 4,
        _ => 1,
    }
}

/// Whether `bytes` hold a control character (below 0x20) and a non-ASCII byte: a min and a
/// max over lanes, which the compiler vectorizes.
fn control_or_high(bytes: &[u8]) -> (bool, bool) {
    let mut low = [0xFFu8; 32];
    let mut high = [0u8; 32];
    let mut blocks = bytes.chunks_exact(32);
    for block in &mut blocks {
        for k in 0..32 {
            low[k] = low[k].min(block[k]);
            high[k] = high[k].max(block[k]);
        }
    }
    let tail = blocks.remainder();
    let low = tail.iter().chain(&low).fold(0xFF, |a, &b| a.min(b));
    let high = tail.iter().chain(&high).fold(0, |a, &b| a.max(b));
    (low < 0x20, high >= 0x80)
}

/// One bit per byte of a 64-byte block.
struct Masks {
    quote: u64,
    backslash: u64,
    control: u64,
    high: u64,
}

#[cfg(target_arch = "x86_64")]
fn masks(block: &[u8; 64]) -> Masks {
    use safe_arch::{
        cmp_eq_mask_i8_m128i, load_unaligned_m128i, max_u8_m128i, move_mask_i8_m128i,
        set_splat_i8_m128i,
    };
    let quote = set_splat_i8_m128i(b'"' as i8);
    let backslash = set_splat_i8_m128i(b'\\' as i8);
    let last_control = set_splat_i8_m128i(0x1F);
    let mut m = Masks {
        quote: 0,
        backslash: 0,
        control: 0,
        high: 0,
    };
    for k in 0..4 {
        let lane: &[u8; 16] = block[16 * k..16 * k + 16].try_into().expect("16 bytes");
        let v = load_unaligned_m128i(lane);
        let bits = |x| u64::from(move_mask_i8_m128i(x) as u16) << (16 * k);
        m.quote |= bits(cmp_eq_mask_i8_m128i(v, quote));
        m.backslash |= bits(cmp_eq_mask_i8_m128i(v, backslash));
        // max(v, 0x1F) == 0x1F exactly when v <= 0x1F (unsigned).
        m.control |= bits(cmp_eq_mask_i8_m128i(
            max_u8_m128i(v, last_control),
            last_control,
        ));
        m.high |= bits(v);
    }
    m
}

#[cfg(not(target_arch = "x86_64"))]
fn masks(block: &[u8; 64]) -> Masks {
    let mut m = Masks {
        quote: 0,
        backslash: 0,
        control: 0,
        high: 0,
    };
    for (k, &c) in block.iter().enumerate() {
        m.quote |= u64::from(c == b'"') << k;
        m.backslash |= u64::from(c == b'\\') << k;
        m.control |= u64::from(c < 0x20) << k;
        m.high |= u64::from(c >= 0x80) << k;
    }
    m
}

/// The bytes escaped by a backslash, given the block's backslashes and whether the previous
/// block's last byte was an escaping backslash (`carry`, updated for the next block): the
/// byte after each odd-length run of backslashes (simdjson's `find_escaped`).
fn escaped_bytes(backslash: u64, carry: &mut u64) -> u64 {
    const EVEN: u64 = 0x5555_5555_5555_5555;
    let backslash = backslash & !*carry;
    let follows = (backslash << 1) | *carry;
    let odd_starts = backslash & !EVEN & !follows;
    let (sequences, overflow) = odd_starts.overflowing_add(backslash);
    *carry = u64::from(overflow);
    (EVEN ^ (sequences << 1)) & follows
}

/// The members of a whole body (one piece), for tests and benchmarks.
pub fn scan(body: &[u8]) -> Result<Members, GaveUp> {
    let mut scanner = Scanner::new();
    scanner.feed(body);
    scanner.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(body: &str, field: Field) -> Option<String> {
        let members = scan(body.as_bytes()).unwrap();
        members.get(field).map(|r| body[r].to_string())
    }

    /// The same body cut into pieces at every place gives the same answer.
    fn in_pieces(body: &[u8]) -> Result<Members, GaveUp> {
        let whole = scan(body);
        for cut in 0..=body.len() {
            let mut s = Scanner::new();
            s.feed(&body[..cut]);
            s.feed(&body[cut..]);
            assert_eq!(s.finish(), whole, "cut at {cut}");
        }
        let mut s = Scanner::new();
        for b in body.chunks(1) {
            s.feed(b);
        }
        assert_eq!(s.finish(), whole, "byte by byte");
        whole
    }

    #[test]
    fn finds_top_level_members() {
        let body = r#" {"messages": [{"role": "user", "content": "hi \"there\""}], "stream" : true, "n": {"model": 1}, "max_tokens": 50, "model": "m"} "#;
        assert_eq!(
            member(body, Field::Messages).unwrap(),
            r#"[{"role": "user", "content": "hi \"there\""}]"#
        );
        assert_eq!(member(body, Field::Stream).unwrap(), "true");
        assert_eq!(member(body, Field::MaxTokens).unwrap(), "50");
        assert_eq!(member(body, Field::Model).unwrap(), "\"m\"");
        assert_eq!(member(body, Field::Prompt), None);
        assert_eq!(
            member(r#"{"prompt": null}"#, Field::Prompt).unwrap(),
            "null"
        );
        assert_eq!(
            member(r#"{"input":-1.5e+3}"#, Field::Input).unwrap(),
            "-1.5e+3"
        );
        in_pieces(body.as_bytes()).unwrap();
    }

    #[test]
    fn long_strings_with_escapes_in_any_pieces() {
        for filler in ["a", "\\n", "\\\\", "\\\"", "é", "\\u00e9", "€ \\t"] {
            let content = filler.repeat(300);
            let body = format!(r#"{{"prompt": "{content}", "model": "m"}}"#);
            assert_eq!(
                member(&body, Field::Prompt).unwrap(),
                format!("\"{content}\""),
                "{filler}"
            );
            in_pieces(body.as_bytes()).unwrap();
        }
        // A backslash run ending exactly at a 64-byte block's end, then the closing quote.
        for n in 1..130 {
            let body = format!(r#"{{"model": "{}\\\\"}}"#, "x".repeat(n));
            in_pieces(body.as_bytes()).unwrap();
        }
    }

    #[test]
    fn gives_up_on_what_serde_rejects() {
        for bad in [
            "",
            "{",
            r#"{"model": }"#,
            r#"{"model": "m",}"#,
            r#"{"a": [1,]}"#,
            r#"{"a": 01}"#,
            r#"{"a": 1.}"#,
            r#"{"a": -}"#,
            r#"{"a": 1e}"#,
            r#"{"a": tru}"#,
            r#"{"a": "\x"}"#,
            r#"{"a": "\u12G4"}"#,
            "{\"a\": \"tab\there\"}",
            r#"{"a": 1} x"#,
            r#"{"a" 1}"#,
            r#"{"a": [1}"#,
            r#"{"a": {1: 2}}"#,
            r#"{"model": "a", "model": "b"}"#,
            r#"[1, 2]"#,
            r#"{"mod\u0065l": "m"}"#,
        ] {
            assert_eq!(in_pieces(bad.as_bytes()), Err(GaveUp), "{bad}");
        }
        let long_bad = format!(r#"{{"prompt": "{}{}"}}"#, "a".repeat(500), '\u{1}');
        assert_eq!(in_pieces(long_bad.as_bytes()), Err(GaveUp));
        // Invalid UTF-8, cut or whole.
        for bytes in [
            &b"{\"a\": \"\xff\"}"[..],
            b"{\"a\": \"\xe2\x82\"}",
            b"{\"a\": \"\xe2\x82",
        ] {
            assert_eq!(in_pieces(bytes), Err(GaveUp));
        }
        let deep = format!("{{\"a\": {}{}}}", "[".repeat(200), "]".repeat(200));
        assert_eq!(scan(deep.as_bytes()), Err(GaveUp), "deeper than 127");
    }
}
