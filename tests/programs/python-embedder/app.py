"""The py-hash plugin: a text embedder for imbed written in Python, built with componentize-py
against wit/0.2.0 (world `embedder-plugin`). The algorithm lives in pyhash.py; this file is the
glue between it and the contract.

Settings:
- `dimensions` (default 256): length of the vectors; part of the space id.
- `stopwords`: path of a file of stop words, one a line, inside the plugin's sandbox (so under
  /model, with `grants.model_dir`); a digest of the list is part of the space id.
"""

import sys

import pyhash
from componentize_py_types import Err, Ok
from wit_world import exports
from wit_world.imports import host
from wit_world.imports.types import (
    Error_BadInput,
    Error_BadSetting,
    Error_ModelNotFound,
    HealthCheck,
    HealthReport,
    HealthStatus,
    ModelInfo,
    PluginInfo,
)

VERSION = "0.1.0"


class _Config:
    """Settings read once per instance: the host gives each instance the same settings."""

    def __init__(self):
        self.dims = pyhash.parse_dims(host.get_setting("dimensions"))
        self.stopwords = frozenset()
        path = host.get_setting("stopwords")
        if path is not None:
            try:
                with open(path, encoding="utf-8") as f:
                    self.stopwords = pyhash.parse_stopwords(f.read())
            except OSError as e:
                # Nothing is visible in the sandbox unless granted: say which grant helps.
                raise Err(Error_ModelNotFound(
                    "cannot read the stop-word file %s (%s): the plugin sees only the "
                    "directory granted as model_dir, at /model; grant it and name the file "
                    "as /model/<file>" % (path, e.strerror or e)))
            except UnicodeDecodeError as e:
                raise Err(Error_ModelNotFound(
                    "the stop-word file %s is not UTF-8 text (%s): save it as UTF-8, one word "
                    "a line" % (path, e.reason)))
        self.space = pyhash.space_id(self.dims, self.stopwords)
        host.log(host.LogLevel.INFO, "py-hash %s: %d dimensions, %d stop words, space %s, "
                 "Python %s" % (pyhash.ALGORITHM, self.dims, len(self.stopwords), self.space,
                                sys.version.split()[0]))


_config = None


def config() -> _Config:
    global _config
    if _config is None:
        try:
            _config = _Config()
        except ValueError as e:
            raise Err(Error_BadSetting(str(e)))
    return _config


class Plugin(exports.Plugin):
    def info(self) -> PluginInfo:
        return PluginInfo(name="py-hash", version=VERSION)

    def warm(self) -> None:
        config()

    def health(self) -> HealthReport:
        # Everything this plugin needs is its settings and the stop-word file: reading them is
        # the whole check.
        try:
            c = config()
        except Err as e:
            return HealthReport(checks=[HealthCheck(
                name="settings", status=HealthStatus.FAILING, detail=e.value.value,
                fix="change this plugin's settings as the message says")])
        return HealthReport(checks=[HealthCheck(
            name="settings", status=HealthStatus.OK,
            detail="%d dimensions, %d stop words" % (c.dims, len(c.stopwords)), fix=None)])


class Embedder(exports.Embedder):
    def text_model(self) -> ModelInfo:
        c = config()
        # Feature hashing has no notion of documents and queries: no task prefixes.
        return ModelInfo(model_id="py-hash-text-" + pyhash.ALGORITHM, dimensions=c.dims,
                         space_id=c.space, task_prefixes=[])

    def embed_texts(self, texts, purpose):
        c = config()
        out = []
        for i, text in enumerate(texts):
            try:
                out.append(Ok(pyhash.embed(text, c.dims, c.stopwords)))
            except pyhash.NoWords as e:
                host.log(host.LogLevel.DEBUG, "item %d: %s" % (i, e))
                out.append(Err(Error_BadInput(str(e))))
        return out
