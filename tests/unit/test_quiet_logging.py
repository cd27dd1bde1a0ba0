"""kexpert.utils.logging.quiet_third_party: one handler per line, and only the listed third-party noise silenced."""

from __future__ import annotations

import logging
import warnings

import pytest

from kexpert.utils.logging import quiet_third_party


def _warn_from(module: str, message: str, category=FutureWarning) -> list[warnings.WarningMessage]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_third_party()
        warnings.warn_explicit(message, category, filename=f"{module}.py", lineno=1, module=module)
    return caught


def test_only_the_known_warning_from_its_module_is_silenced():
    msg = "`isinstance(treespec, LeafSpec)` is deprecated, use `isinstance(treespec, TreeSpec)` instead."
    assert _warn_from("lightning.pytorch.utilities._pytree", msg) == []
    assert len(_warn_from("kexpert.training.fit", msg)) == 1  # the same text from elsewhere is still shown
    assert len(_warn_from("lightning.pytorch.utilities._pytree", "something else is deprecated")) == 1


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture()
def hydra_like_root():
    """A root handler (Hydra's console) and Lightning's own console handler on ``lightning.pytorch``."""
    root, lightning = logging.getLogger(), logging.getLogger("lightning.pytorch")
    collect, own = _Collect(), logging.StreamHandler()
    saved = (root.level, lightning.propagate, lightning.level)
    root.addHandler(collect)
    root.setLevel(logging.INFO)
    lightning.addHandler(own)
    lightning.propagate = False
    lightning.setLevel(logging.INFO)
    yield lightning, own, collect
    root.removeHandler(collect)
    lightning.removeHandler(own)
    root.level, lightning.propagate, lightning.level = saved


def test_lightning_lines_go_through_the_root_handlers_once(hydra_like_root):
    lightning, own, collect = hydra_like_root
    quiet_third_party()
    assert own not in lightning.handlers and lightning.propagate
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    rank_zero.info("GPU available: False, used: False")
    rank_zero.info(
        "💡 Tip: For seamless cloud logging, try installing [litlogger](https://pypi.org/project/litlogger/)"
    )
    assert collect.messages == ["GPU available: False, used: False"]


def test_faiss_loader_lines_are_dropped_and_other_faiss_lines_kept(caplog):
    quiet_third_party()
    loader = logging.getLogger("faiss.loader")
    with caplog.at_level(logging.INFO, logger="faiss.loader"):
        loader.info("Loading faiss with AVX512 support.")
        loader.info("Could not load library with AVX512 support due to:\nModuleNotFoundError()")
        loader.info("Successfully loaded faiss with AVX2 support.")
        loader.warning("something the user must see")
    assert [r.getMessage() for r in caplog.records] == ["something the user must see"]
