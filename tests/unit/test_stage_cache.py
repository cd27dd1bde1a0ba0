import pytest

from kexpert.pipeline.cache import StageCache
from kexpert.pipeline.train import resolve_stages
from kexpert.utils.errors import ConfigError


def test_stage_is_built_once_and_reused(tmp_path):
    cache = StageCache(tmp_path)
    calls = []

    def build(d):
        calls.append(d)
        (d / "out.txt").write_text("x")

    a = cache.run("s", {"k": 1}, build)
    b = cache.run("s", {"k": 1}, build)
    c = cache.run("s", {"k": 2}, build)
    assert len(calls) == 2 and not a.reused and b.reused and a.path == b.path and c.path != a.path
    assert (a.path / "out.txt").read_text() == "x"


def test_crashed_stage_leaves_nothing_trusted(tmp_path):
    cache = StageCache(tmp_path)

    def boom(d):
        (d / "half.txt").write_text("partial")
        raise RuntimeError("crash")

    with pytest.raises(RuntimeError):
        cache.run("s", {"k": 1}, boom)
    assert cache.lookup("s", {"k": 1}) is None
    assert not cache.path("s", StageCache.key_of({"k": 1})).exists()

    seen = []

    def resume(d):
        seen.append((d / "half.txt").read_text())  # the partial work of the crashed attempt is handed back
        (d / "ok.txt").write_text("ok")

    art = cache.run("s", {"k": 1}, resume)
    assert seen == ["partial"] and not art.reused and (art.path / "ok.txt").exists()
    assert not list((tmp_path / "stages" / "s").glob(".*.partial"))


def test_disabled_cache_recomputes(tmp_path):
    cache = StageCache(tmp_path, enabled=False)
    n = []
    cache.run("s", {"k": 1}, lambda d: n.append(1))
    cache.run("s", {"k": 1}, lambda d: n.append(1))
    assert len(n) == 2


def test_resolve_stages():
    assert resolve_stages("all")[-1] == "report"
    assert resolve_stages("experts") == ["kshot", "experts"]
    assert resolve_stages(["eval", "kshot"]) == ["kshot", "eval"]
    with pytest.raises(ConfigError, match="unknown stage"):
        resolve_stages("nope")
