//! Go compatibility: the real server decodes with Go's encoding/json into typed structs, and its
//! error texts are those of Go's scanner, decoder, base64 and time packages.

use serde_json::Value;

/// Go's `maxNestingDepth`.
const MAX_DEPTH: usize = 10_000;

/// Field types of the request structs, as far as decoding can fail on them.
#[derive(Clone, Copy, Debug)]
pub enum Ty {
    Str,
    Bool,
    Int,
    Map,
    Any,
    Duration,
    Images,
    Messages,
}

use Ty::*;

pub const GENERATE: &[(&str, Ty)] = &[
    ("model", Str),
    ("prompt", Str),
    ("suffix", Str),
    ("system", Str),
    ("template", Str),
    ("stream", Bool),
    ("raw", Bool),
    ("format", Any),
    ("keep_alive", Duration),
    ("images", Images),
    ("options", Map),
    ("think", Any),
];
pub const CHAT: &[(&str, Ty)] = &[
    ("model", Str),
    ("messages", Messages),
    ("stream", Bool),
    ("format", Any),
    ("keep_alive", Duration),
    ("tools", Any),
    ("options", Map),
    ("think", Any),
];
const MESSAGE: &[(&str, Ty)] = &[
    ("role", Str),
    ("content", Str),
    ("thinking", Str),
    ("images", Images),
    ("tool_calls", Any),
    ("tool_name", Str),
];
pub const EMBED: &[(&str, Ty)] = &[
    ("model", Str),
    ("input", Any),
    ("keep_alive", Duration),
    ("truncate", Bool),
    ("dimensions", Int),
    ("options", Map),
];
pub const EMBEDDINGS: &[(&str, Ty)] = &[
    ("model", Str),
    ("prompt", Str),
    ("keep_alive", Duration),
    ("options", Map),
];
pub const SHOW: &[(&str, Ty)] = &[
    ("model", Str),
    ("name", Str),
    ("system", Str),
    ("template", Str),
    ("verbose", Bool),
    ("options", Map),
];

/// Read the body as gin's `ShouldBindJSON` does: the first JSON value, anything after it
/// ignored; an empty or blank body is "missing request body".
pub fn bind(body: &[u8]) -> Result<Value, String> {
    let end = match scan(body) {
        Ok(end) => end,
        Err(Scan::Empty) => return Err("missing request body".into()),
        Err(Scan::UnexpectedEof) => return Err("unexpected EOF".into()),
        Err(Scan::Syntax(msg)) => return Err(msg),
    };
    // Go replaces invalid UTF-8 rather than refusing it.
    let text = String::from_utf8_lossy(&body[..end]);
    serde_json::from_str(&text).map_err(|e| e.to_string())
}

/// Decode into the named struct's fields in document order: the first type error (or bad
/// base64) is kept and reported, a duration's error stops at once, as in Go.
pub fn check(v: &Value, struct_name: &str, fields: &[(&str, Ty)]) -> Result<(), String> {
    let mut saved = None;
    match v {
        Value::Null => {}
        Value::Object(obj) => check_struct(obj, struct_name, "", fields, &mut saved)?,
        other => {
            return Err(format!(
                "json: cannot unmarshal {} into Go value of type api.{struct_name}",
                kind(other)
            ))
        }
    }
    saved.map_or(Ok(()), Err)
}

fn check_struct(
    obj: &serde_json::Map<String, Value>,
    struct_name: &str,
    path: &str,
    fields: &[(&str, Ty)],
    saved: &mut Option<String>,
) -> Result<(), String> {
    for (key, value) in obj {
        let Some((name, ty)) = fields
            .iter()
            .find(|(n, _)| n == key)
            .or_else(|| fields.iter().find(|(n, _)| n.eq_ignore_ascii_case(key)))
        else {
            continue;
        };
        let path = if path.is_empty() {
            name.to_string()
        } else {
            format!("{path}.{name}")
        };
        check_value(value, *ty, struct_name, &path, saved)?;
    }
    Ok(())
}

fn check_value(
    v: &Value,
    ty: Ty,
    struct_name: &str,
    path: &str,
    saved: &mut Option<String>,
) -> Result<(), String> {
    let mut save = |what: &str, go_type: &str| {
        if saved.is_none() {
            *saved = Some(format!(
                "json: cannot unmarshal {what} into Go struct field {struct_name}.{path} of type {go_type}"
            ));
        }
    };
    match (ty, v) {
        (_, Value::Null) | (Any, _) => {}
        (Str, Value::String(_)) | (Bool, Value::Bool(_)) | (Map, Value::Object(_)) => {}
        (Str, other) => save(kind(other), "string"),
        (Bool, other) => save(kind(other), "bool"),
        (Map, other) => save(kind(other), "map[string]interface {}"),
        (Int, Value::Number(n)) => {
            if !n.is_i64() {
                save(&format!("number {n}"), "int");
            }
        }
        (Int, other) => save(kind(other), "int"),
        (Duration, Value::Number(_)) => {}
        (Duration, Value::String(s)) => {
            parse_duration(s)?;
        }
        (Duration, _) => return Err("invalid duration".into()),
        (Images, Value::Array(items)) => {
            for item in items {
                match item {
                    Value::Null => {}
                    Value::String(s) => {
                        if let Err(at) = base64(s.as_bytes()) {
                            if saved.is_none() {
                                *saved = Some(format!("illegal base64 data at input byte {at}"));
                            }
                        }
                    }
                    other => {
                        if saved.is_none() {
                            *saved = Some(format!(
                                "json: cannot unmarshal {} into Go struct field {struct_name}.{path} of type api.ImageData",
                                kind(other)
                            ));
                        }
                    }
                }
            }
        }
        (Images, other) => save(kind(other), "[]api.ImageData"),
        (Messages, Value::Array(items)) => {
            for item in items {
                match item {
                    Value::Null => {}
                    Value::Object(obj) => check_struct(obj, "Message", path, MESSAGE, saved)?,
                    other => {
                        if saved.is_none() {
                            *saved = Some(format!(
                                "json: cannot unmarshal {} into Go struct field {struct_name}.{path} of type api.Message",
                                kind(other)
                            ));
                        }
                    }
                }
            }
        }
        (Messages, other) => save(kind(other), "[]api.Message"),
    }
    Ok(())
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

pub enum Scan {
    Empty,
    UnexpectedEof,
    Syntax(String),
}

#[derive(Clone, Copy)]
enum St {
    BeginValue,
    BeginValueOrEmpty,
    BeginStringOrEmpty,
    BeginString,
    EndValue,
    InString,
    InStringEsc,
    InStringEscU(u8),
    Neg,
    Zero,
    One,
    Dot,
    Dot0,
    E,
    ESign,
    E0,
    Lit(&'static str, usize),
}

#[derive(Clone, Copy)]
enum Ps {
    ObjectKey,
    ObjectValue,
    ArrayValue,
}

enum Step {
    Next(St),
    /// Hand the same byte to another state, as Go's state functions call each other.
    Again(St),
    /// The value ended before this byte.
    EndBefore,
    /// The value ended with this byte.
    EndWith,
    Error(String),
}

/// Go's `encoding/json` scanner over the first value: where it ends, or Go's error text.
pub fn scan(data: &[u8]) -> Result<usize, Scan> {
    let mut st = St::BeginValue;
    let mut stack: Vec<Ps> = Vec::new();
    for (i, &c) in data.iter().enumerate() {
        let mut state = st;
        loop {
            match step(state, c, &mut stack) {
                Step::Next(next) => {
                    st = next;
                    break;
                }
                Step::Again(next) => state = next,
                Step::EndBefore => return Ok(i),
                Step::EndWith => return Ok(i + 1),
                Step::Error(context) => {
                    return Err(Scan::Syntax(format!(
                        "invalid character {} {context}",
                        quote_char(c)
                    )))
                }
            }
        }
    }
    match st {
        St::BeginValue if stack.is_empty() => Err(Scan::Empty),
        St::EndValue | St::Zero | St::One | St::Dot0 | St::E0 if stack.is_empty() => Ok(data.len()),
        _ => Err(Scan::UnexpectedEof),
    }
}

fn step(st: St, c: u8, stack: &mut Vec<Ps>) -> Step {
    use Step::*;
    let space = matches!(c, b' ' | b'\t' | b'\r' | b'\n');
    let push = |stack: &mut Vec<Ps>, p: Ps, next: St| {
        stack.push(p);
        if stack.len() > MAX_DEPTH {
            Error("exceeded max depth".into())
        } else {
            Next(next)
        }
    };
    match st {
        St::BeginValueOrEmpty if space => Next(st),
        St::BeginValueOrEmpty if c == b']' => Again(St::EndValue),
        St::BeginValueOrEmpty => Again(St::BeginValue),
        St::BeginValue if space => Next(st),
        St::BeginValue => match c {
            b'{' => push(stack, Ps::ObjectKey, St::BeginStringOrEmpty),
            b'[' => push(stack, Ps::ArrayValue, St::BeginValueOrEmpty),
            b'"' => Next(St::InString),
            b'-' => Next(St::Neg),
            b'0' => Next(St::Zero),
            b'1'..=b'9' => Next(St::One),
            b't' => Next(St::Lit("true", 1)),
            b'f' => Next(St::Lit("false", 1)),
            b'n' => Next(St::Lit("null", 1)),
            _ => Error("looking for beginning of value".into()),
        },
        St::BeginStringOrEmpty if space => Next(st),
        St::BeginStringOrEmpty if c == b'}' => {
            if let Some(top) = stack.last_mut() {
                *top = Ps::ObjectValue;
            }
            Again(St::EndValue)
        }
        St::BeginStringOrEmpty => Again(St::BeginString),
        St::BeginString if space => Next(st),
        St::BeginString if c == b'"' => Next(St::InString),
        St::BeginString => Error("looking for beginning of object key string".into()),
        St::EndValue => {
            let Some(top) = stack.last().copied() else {
                return EndBefore;
            };
            if space {
                return Next(St::EndValue);
            }
            let close = |stack: &mut Vec<Ps>| {
                stack.pop();
                if stack.is_empty() {
                    EndWith
                } else {
                    Next(St::EndValue)
                }
            };
            match (top, c) {
                (Ps::ObjectKey, b':') => {
                    if let Some(t) = stack.last_mut() {
                        *t = Ps::ObjectValue;
                    }
                    Next(St::BeginValue)
                }
                (Ps::ObjectKey, _) => Error("after object key".into()),
                (Ps::ObjectValue, b',') => {
                    if let Some(t) = stack.last_mut() {
                        *t = Ps::ObjectKey;
                    }
                    Next(St::BeginString)
                }
                (Ps::ObjectValue, b'}') => close(stack),
                (Ps::ObjectValue, _) => Error("after object key:value pair".into()),
                (Ps::ArrayValue, b',') => Next(St::BeginValue),
                (Ps::ArrayValue, b']') => close(stack),
                (Ps::ArrayValue, _) => Error("after array element".into()),
            }
        }
        St::InString => match c {
            b'"' => Next(St::EndValue),
            b'\\' => Next(St::InStringEsc),
            c if c < 0x20 => Error("in string literal".into()),
            _ => Next(st),
        },
        St::InStringEsc => match c {
            b'b' | b'f' | b'n' | b'r' | b't' | b'\\' | b'/' | b'"' => Next(St::InString),
            b'u' => Next(St::InStringEscU(0)),
            _ => Error("in string escape code".into()),
        },
        St::InStringEscU(n) if c.is_ascii_hexdigit() => Next(if n == 3 {
            St::InString
        } else {
            St::InStringEscU(n + 1)
        }),
        St::InStringEscU(_) => Error("in \\u hexadecimal character escape".into()),
        St::Neg => match c {
            b'0' => Next(St::Zero),
            b'1'..=b'9' => Next(St::One),
            _ => Error("in numeric literal".into()),
        },
        St::One if c.is_ascii_digit() => Next(st),
        St::One => Again(St::Zero),
        St::Zero => match c {
            b'.' => Next(St::Dot),
            b'e' | b'E' => Next(St::E),
            _ => Again(St::EndValue),
        },
        St::Dot if c.is_ascii_digit() => Next(St::Dot0),
        St::Dot => Error("after decimal point in numeric literal".into()),
        St::Dot0 if c.is_ascii_digit() => Next(st),
        St::Dot0 if c == b'e' || c == b'E' => Next(St::E),
        St::Dot0 => Again(St::EndValue),
        St::E if c == b'+' || c == b'-' => Next(St::ESign),
        St::E => Again(St::ESign),
        St::ESign if c.is_ascii_digit() => Next(St::E0),
        St::ESign => Error("in exponent of numeric literal".into()),
        St::E0 if c.is_ascii_digit() => Next(st),
        St::E0 => Again(St::EndValue),
        St::Lit(word, pos) => {
            let w = word.as_bytes();
            if c == w[pos] {
                Next(if pos + 1 == w.len() {
                    St::EndValue
                } else {
                    St::Lit(word, pos + 1)
                })
            } else {
                Error(format!(
                    "in literal {word} (expecting {})",
                    quote_char(w[pos])
                ))
            }
        }
    }
}

/// Go's `quoteChar` in the scanner's messages.
fn quote_char(c: u8) -> String {
    match c {
        b'\'' => "'\\''".into(),
        b'"' => "'\"'".into(),
        _ => {
            let q = quote(&char::from(c).to_string());
            format!("'{}'", &q[1..q.len() - 1])
        }
    }
}

/// Go's `strconv.Quote` (and `%q`) for the texts that appear here.
pub fn quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\x07' => out.push_str("\\a"),
            '\x08' => out.push_str("\\b"),
            '\x0c' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\x0b' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn decode_char(c: u8) -> Option<u32> {
    let v = match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => return None,
    };
    Some(u32::from(v))
}

/// Go's `base64.StdEncoding.Decode`, which is how `encoding/json` fills a `[]byte`:
/// standard alphabet, padding required, `\r` and `\n` skipped, bits after the last byte not
/// checked. The error is the offset Go's `CorruptInputError` reports.
pub fn base64(src: &[u8]) -> Result<Vec<u8>, usize> {
    let skip_newlines = |mut si: usize| {
        while si < src.len() && (src[si] == b'\n' || src[si] == b'\r') {
            si += 1;
        }
        si
    };
    let mut out = Vec::with_capacity(src.len() / 4 * 3);
    let mut si = 0;
    while si < src.len() {
        // One quantum of four characters, as Go's decodeQuantum.
        let mut dbuf = [0u32; 4];
        let mut dlen = 4;
        let mut trailing = None;
        let mut j = 0;
        while j < 4 {
            if si == src.len() {
                if j == 0 {
                    return Ok(out);
                }
                return Err(si - j);
            }
            let c = src[si];
            si += 1;
            if let Some(v) = decode_char(c) {
                dbuf[j] = v;
                j += 1;
                continue;
            }
            if c == b'\n' || c == b'\r' {
                continue;
            }
            if c != b'=' {
                return Err(si - 1);
            }
            match j {
                0 | 1 => return Err(si - 1),
                2 => {
                    si = skip_newlines(si);
                    if si == src.len() {
                        return Err(src.len());
                    }
                    if src[si] != b'=' {
                        return Err(si - 1);
                    }
                    si += 1;
                }
                _ => {}
            }
            si = skip_newlines(si);
            if si < src.len() {
                trailing = Some(si);
            }
            dlen = j;
            break;
        }
        let val = dbuf[0] << 18 | dbuf[1] << 12 | dbuf[2] << 6 | dbuf[3];
        let bytes = [(val >> 16) as u8, (val >> 8) as u8, val as u8];
        out.extend_from_slice(&bytes[..dlen - 1]);
        if let Some(at) = trailing {
            return Err(at);
        }
    }
    Ok(out)
}

/// Go's `time.ParseDuration`, in nanoseconds; errors in Go's words.
pub fn parse_duration(text: &str) -> Result<f64, String> {
    let invalid = || format!("time: invalid duration {}", quote(text));
    let mut s = text;
    let mut neg = false;
    if let Some(rest) = s.strip_prefix('-') {
        neg = true;
        s = rest;
    } else if let Some(rest) = s.strip_prefix('+') {
        s = rest;
    }
    if s == "0" {
        return Ok(0.0);
    }
    if s.is_empty() {
        return Err(invalid());
    }
    let mut total = 0.0;
    while !s.is_empty() {
        if !s.starts_with(|c: char| c == '.' || c.is_ascii_digit()) {
            return Err(invalid());
        }
        let int_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let int_part = &s[..int_end];
        s = &s[int_end..];
        let mut frac = "";
        if let Some(rest) = s.strip_prefix('.') {
            let end = rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len());
            frac = &rest[..end];
            s = &rest[end..];
        }
        if int_part.is_empty() && frac.is_empty() {
            return Err(invalid());
        }
        let unit_end = s
            .find(|c: char| c == '.' || c.is_ascii_digit())
            .unwrap_or(s.len());
        if unit_end == 0 {
            return Err(format!("time: missing unit in duration {}", quote(text)));
        }
        let unit = &s[..unit_end];
        s = &s[unit_end..];
        let scale = match unit {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => {
                return Err(format!(
                    "time: unknown unit {} in duration {}",
                    quote(unit),
                    quote(text)
                ))
            }
        };
        let number: f64 = format!("0{int_part}.{frac}0").parse().unwrap_or(0.0);
        total += number * scale;
    }
    Ok(if neg { -total } else { total })
}
