//! Model names and tags, and times as Ollama formats them.

use super::*;

/// `name` with `:latest` added when it has no tag.
pub(super) fn with_tag(name: &str) -> String {
    let last = name.rsplit('/').next().unwrap_or(name);
    if last.contains(':') {
        name.to_string()
    } else {
        format!("{name}:latest")
    }
}

/// `host/namespace/model:tag`, lowercase, with Ollama's defaults filled in
/// (`llava` → `registry.ollama.ai/library/llava:latest`); `None` for an invalid name.
pub(super) fn canonical(name: &str) -> Option<String> {
    let (path, tag) = match name.rfind(':') {
        Some(i) if !name[i + 1..].contains('/') => (&name[..i], &name[i + 1..]),
        _ => (name, "latest"),
    };
    let parts: Vec<&str> = path.split('/').collect();
    let (host, ns, model) = match parts.as_slice() {
        [m] => (DEFAULT_HOST, "library", *m),
        [n, m] => (DEFAULT_HOST, *n, *m),
        [h, n, m] => (*h, *n, *m),
        _ => return None,
    };
    let part_ok = |s: &str, max: usize, first_underscore: bool, extra: &[char]| {
        let mut chars = s.chars();
        let first = chars.next();
        !s.is_empty()
            && s.len() <= max
            && first.is_some_and(|c| c.is_ascii_alphanumeric() || (first_underscore && c == '_'))
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c) || extra.contains(&c))
    };
    let valid = part_ok(host, 350, false, &[':'])
        && part_ok(ns, 80, false, &[])
        && part_ok(model, 80, false, &[])
        && part_ok(tag, 80, true, &[]);
    valid.then(|| format!("{host}/{ns}/{model}:{tag}").to_ascii_lowercase())
}

pub(super) fn now_rfc3339() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(now.as_secs(), now.subsec_nanos())
}

/// Go's `time.RFC3339Nano` in UTC, trailing zeros of the fraction dropped.
pub(super) fn rfc3339(secs: u64, nanos: u32) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let mut s = format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    );
    if nanos > 0 {
        let f = format!("{nanos:09}");
        s.push('.');
        s.push_str(f.trim_end_matches('0'));
    }
    s.push('Z');
    s
}
