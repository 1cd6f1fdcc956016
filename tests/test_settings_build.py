"""Both training commands build their config through `settings.layers.build_layered`: a value the config
refuses is named with the layer that set it, so the user knows which file (or the command line) to fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from clasp.finetune.config import FinetuneConfigError
from clasp.finetune.config import build_config as build_finetune
from clasp.pretraining.config import ConfigError
from clasp.pretraining.config import build_config as build_pretrain


def test_pretrain_names_the_config_file_or_the_command_line_that_set_a_refused_value(tmp_path: Path) -> None:
    file = tmp_path / "run.yaml"
    file.write_text("shards: s\nout: o\nbatch_size: 0\n")
    with pytest.raises(ConfigError) as caught:
        build_pretrain(file)
    assert str(caught.value).startswith(f"{file}: ") and "batch_size" in str(caught.value)
    assert caught.value.key == "batch_size"
    with pytest.raises(ConfigError) as caught:
        build_pretrain(file, batch_size=-3)
    assert str(caught.value).startswith("command line: ") and "batch_size" in str(caught.value)


def test_finetune_names_the_layer_too_and_reads_unknown_keys_as_one_line(tmp_path: Path) -> None:
    file = tmp_path / "ft.yaml"
    file.write_text("task: reid\nbackbone: b\ndata: d\nout: o\nlr: -1.0\n")
    with pytest.raises(FinetuneConfigError) as caught:
        build_finetune(file)
    assert str(caught.value).startswith(f"{file}: lr")
    with pytest.raises(FinetuneConfigError, match="unknown setting 'learning_rate'"):
        build_finetune(file, learning_rate=0.1)
