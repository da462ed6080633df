//! The decoder's fast path: a scanner for the messages producers actually send — one flat JSON
//! object, strings without escapes, integers without signs or fractions. It builds the same
//! [`Wire`] the serde path would and returns `None` for anything else (escapes, nesting, floats,
//! `null`, duplicate known fields, missing fields, bad UTF-8 …), which then goes through
//! sonic-rs + serde: every error message and every unusual-but-valid message still comes from
//! the one general path. Accepting only a subset of what that path accepts is what keeps the two
//! equal; `decode_reference` (the general path alone) is compared with `decode` by the unit tests
//! and by the fuzz target.
//!
//! Why: serde's field-by-field visitor was ~60 % of decoding time on ~220-byte events.

use std::borrow::Cow;

use crate::{Wire, WireDecimal, WireTime};

#[derive(Clone, Copy)]
enum Val<'a> {
    Str(&'a str),
    Int(i64),
}

#[inline]
fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while let Some(&c) = b.get(i) {
        if !matches!(c, b' ' | b'\t' | b'\n' | b'\r') {
            break;
        }
        i += 1;
    }
    i
}

/// The string starting at the quote `b[i]`, and the index after its closing quote; `None` at an
/// escape or a raw control character (invalid JSON: the general path words the error).
///
/// Eight bytes at a time (SWAR): fields are 5–30 bytes, too short for memchr's SIMD set-up to
/// pay off. A byte is flagged if it is `"`, `\\` or below 0x20; the lowest flagged byte of a word is
/// always a true hit (the borrow of the zero-byte trick only reaches bytes above one).
#[inline]
fn string(s: &str, i: usize) -> Option<(&str, usize)> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let b = s.as_bytes();
    let mut j = i + 1;
    let end = loop {
        if let Some(w) = b.get(j..j + 8) {
            let x = u64::from_le_bytes(w.try_into().expect("8 bytes"));
            let q = x ^ (LO * b'"' as u64);
            let e = x ^ (LO * b'\\' as u64);
            let hit = (q.wrapping_sub(LO) & !q
                | e.wrapping_sub(LO) & !e
                | x.wrapping_sub(LO * 0x20) & !x)
                & HI;
            if hit != 0 {
                break j + (hit.trailing_zeros() / 8) as usize;
            }
            j += 8;
        } else {
            match b[j..]
                .iter()
                .position(|&c| c == b'"' || c == b'\\' || c < 0x20)
            {
                Some(k) => break j + k,
                None => return None,
            }
        }
    };
    if b[end] != b'"' {
        return None;
    }
    Some((&s[i + 1..end], end + 1))
}

/// A non-negative integer without leading zeros, fraction or exponent (at most 18 digits, so it
/// fits an i64), and the index after it.
#[inline]
fn integer(b: &[u8], i: usize) -> Option<(i64, usize)> {
    let mut j = i;
    let mut v: i64 = 0;
    while let Some(&c) = b.get(j) {
        if !c.is_ascii_digit() {
            break;
        }
        // Wrapping: a longer number is refused below, after the digits are counted.
        v = v.wrapping_mul(10).wrapping_add((c - b'0') as i64);
        j += 1;
    }
    let digits = j - i;
    if digits == 0 || digits > 18 || (digits > 1 && b[i] == b'0') {
        return None;
    }
    if matches!(b.get(j), Some(b'.' | b'e' | b'E')) {
        return None;
    }
    Some((v, j))
}

pub(crate) fn scan(payload: &[u8]) -> Option<Wire<'_>> {
    let s = std::str::from_utf8(payload).ok()?;
    let b = s.as_bytes();
    let mut i = skip_ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    i = skip_ws(b, i + 1);
    // event_id, event_type, event_time, campaign_id, ad_id, user_id, revenue, currency, device,
    // country, placement
    let mut f: [Option<Val>; 11] = [None; 11];
    loop {
        if b.get(i) != Some(&b'"') {
            return None; // `{}` or not a key: the general path words the error
        }
        let (key, ni) = string(s, i)?;
        i = skip_ws(b, ni);
        if b.get(i) != Some(&b':') {
            return None;
        }
        i = skip_ws(b, i + 1);
        let v = match b.get(i)? {
            b'"' => {
                let (v, ni) = string(s, i)?;
                i = ni;
                Val::Str(v)
            }
            c if c.is_ascii_digit() => {
                let (v, ni) = integer(b, i)?;
                i = ni;
                Val::Int(v)
            }
            _ => return None,
        };
        let slot = match key {
            "event_id" => 0,
            "event_type" => 1,
            "event_time" => 2,
            "campaign_id" => 3,
            "ad_id" => 4,
            "user_id" => 5,
            "revenue" => 6,
            "currency" => 7,
            "device" => 8,
            "country" => 9,
            "placement" => 10,
            // An object: the general path parses and checks it.
            "attributes" => return None,
            _ => usize::MAX, // unknown fields are ignored, as by the general path
        };
        if slot != usize::MAX {
            if f[slot].is_some() {
                return None; // a duplicate field is an error there
            }
            f[slot] = Some(v);
        }
        i = skip_ws(b, i);
        match b.get(i)? {
            b',' => i = skip_ws(b, i + 1),
            b'}' => {
                i += 1;
                break;
            }
            _ => return None,
        }
    }
    if skip_ws(b, i) != b.len() {
        return None;
    }
    fn text(v: Option<Val<'_>>) -> Option<Cow<'_, str>> {
        match v {
            Some(Val::Str(s)) => Some(Cow::Borrowed(s)),
            _ => None,
        }
    }
    // Optional fields must be strings when present; anything else is the general path's error.
    fn opt(v: Option<Val<'_>>) -> Option<Option<Cow<'_, str>>> {
        match v {
            None => Some(None),
            Some(Val::Str(s)) => Some(Some(Cow::Borrowed(s))),
            Some(Val::Int(_)) => None,
        }
    }
    Some(Wire {
        event_id: text(f[0])?,
        event_type: text(f[1])?,
        event_time: match f[2]? {
            Val::Str(s) => WireTime::Text(Cow::Borrowed(s)),
            Val::Int(n) => WireTime::Millis(n),
        },
        campaign_id: text(f[3])?,
        ad_id: text(f[4])?,
        user_id: text(f[5])?,
        revenue: match f[6] {
            None => None,
            Some(Val::Str(s)) => Some(WireDecimal::Text(Cow::Borrowed(s))),
            Some(Val::Int(n)) => Some(WireDecimal::Int(n)),
        },
        currency: opt(f[7])?,
        device: opt(f[8])?,
        country: opt(f[9])?,
        placement: opt(f[10])?,
        attributes: None,
    })
}
