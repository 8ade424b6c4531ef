"""Feature hashing for text, in pure Python: the algorithm of the py-hash plugin.

Kept apart from the component glue (app.py) so it runs under a plain `python3` too.

Algorithm v1, for a text and a dimension count `dims`:

1. Words are the maximal runs of characters for which `str.isalnum()` is true, lowercased with
   `str.lower()`. Words in the stop-word set are dropped.
2. Each word contributes the feature `w:<word>` with weight 1.0 and, for every character
   trigram of `^<word>$`, the feature `c:<trigram>` with weight 0.5.
3. A feature's UTF-8 bytes are hashed with 64-bit FNV-1a. The bucket is `hash % dims`; the sign
   is `-1` when bit 63 of the hash is set, else `+1`. The vector adds `sign * weight` there.
4. The vector is divided by its Euclidean length. A text with no words has no vector.

Any change to these rules changes the numbers, so it must change ALGORITHM (and the space id).
"""

ALGORITHM = "v1"
MIN_DIMS = 8
MAX_DIMS = 4096
DEFAULT_DIMS = 256

_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3
_MASK = 0xFFFFFFFFFFFFFFFF


class NoWords(ValueError):
    """The text has no words to embed."""


def fnv1a64(data: bytes) -> int:
    h = _FNV_OFFSET
    for b in data:
        h = ((h ^ b) * _FNV_PRIME) & _MASK
    return h


def words(text: str, stopwords=frozenset()) -> list:
    out, current = [], []
    for ch in text:
        if ch.isalnum():
            current.append(ch)
        elif current:
            out.append("".join(current).lower())
            current = []
    if current:
        out.append("".join(current).lower())
    return [w for w in out if w not in stopwords]


def features(word: str):
    yield "w:" + word, 1.0
    marked = "^" + word + "$"
    for i in range(len(marked) - 2):
        yield "c:" + marked[i : i + 3], 0.5


def embed(text: str, dims: int, stopwords=frozenset()) -> list:
    """The unit vector of `text`; raises NoWords when there is nothing to embed."""
    ws = words(text)
    if not ws:
        raise NoWords("the text has no letters or digits to embed")
    ws = [w for w in ws if w not in stopwords]
    if not ws:
        raise NoWords("every word of the text is a stop word: nothing to embed")
    v = [0.0] * dims
    for w in ws:
        for feature, weight in features(w):
            h = fnv1a64(feature.encode("utf-8"))
            v[h % dims] += -weight if h >> 63 else weight
    norm = sum(x * x for x in v) ** 0.5
    if norm == 0.0:
        # Features can cancel out exactly (opposite signs in one bucket): rare, but not a vector.
        raise NoWords("the text's features cancel out in %d dimensions: use more dimensions" % dims)
    return [x / norm for x in v]


def parse_dims(raw) -> int:
    """The `dimensions` setting (a TOML integer rendered as a string), validated."""
    if raw is None:
        return DEFAULT_DIMS
    try:
        dims = int(raw)
    except ValueError:
        dims = 0
    if not MIN_DIMS <= dims <= MAX_DIMS:
        raise ValueError("setting dimensions = %s is not an integer from %d to %d: fix it in the "
                         "plugin's [settings] table" % (raw, MIN_DIMS, MAX_DIMS))
    return dims


def parse_stopwords(content: str) -> frozenset:
    """One stop word per line; blank lines and lines starting with `#` are ignored."""
    out = set()
    for line in content.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            out.update(words(line))
    return frozenset(out)


def space_id(dims: int, stopwords: frozenset) -> str:
    """The space id: stop words change the numbers, so a digest of the set is part of it."""
    if not stopwords:
        return "py-hash/text@%s:%d" % (ALGORITHM, dims)
    digest = fnv1a64("\n".join(sorted(stopwords)).encode("utf-8"))
    return "py-hash/text@%s+sw%016x:%d" % (ALGORITHM, digest, dims)
