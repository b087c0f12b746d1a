"""ModelRegistry: base fallback, publish/activate, and that only finished versions show."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from models.registry import BASE_ID, ModelNotFound, ModelRegistry, ModelVersion, base_model_path


def _publish(registry: ModelRegistry, manifest: dict[str, Any], **kwargs: Any) -> ModelVersion:
    with registry.staging() as staging:
        (staging / "model").mkdir()
        (staging / "model" / "modules.json").write_text("[]")
        (staging / "checkpoint.pt").write_bytes(b"x")
        return registry.publish(staging, manifest, **kwargs)


def test_base_is_active_when_nothing_was_trained(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    active = registry.active()
    assert active.id == BASE_ID and active.path == base_model_path()
    assert (active.path / "modules.json").is_file()
    assert active.epsilon is None and active.status == "finished"
    assert [v.id for v in registry.list()] == [BASE_ID]


def test_publish_activate_and_switch_back(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    v1 = _publish(registry, {"epsilon": 8.0, "delta": 1e-5, "config": {"a": 1}})
    assert registry.active() == v1 and v1.path == tmp_path / "models" / v1.id / "model"
    v2 = _publish(registry, {"epsilon": 4.0, "delta": 1e-5, "config": {}}, activate=False)
    assert registry.active().id == v1.id
    assert [v.id for v in registry.list()] == [BASE_ID, v1.id, v2.id]
    assert registry.activate(v2.id).id == registry.active().id == v2.id
    assert registry.activate(BASE_ID).id == BASE_ID and registry.active().id == BASE_ID
    assert registry.get(v1.id).config == {"a": 1}
    assert not any((tmp_path / "models" / "tmp").iterdir())


def test_incomplete_staging_is_discarded_and_never_visible(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    with pytest.raises(ValueError, match="model"), registry.staging() as staging:
        (staging / "checkpoint.pt").write_bytes(b"x")  # no model/
        registry.publish(staging, {"epsilon": 1.0, "delta": 1e-5, "config": {}})
    assert not staging.exists() and not any(registry.tmp_dir.iterdir())
    assert [v.id for v in registry.list()] == [BASE_ID] and registry.active().id == BASE_ID


def test_unfinished_or_unknown_versions_are_not_found(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    v = _publish(registry, {"epsilon": 1.0, "delta": 1e-5, "config": {}})
    manifest = tmp_path / "models" / v.id / "manifest.json"
    data = json.loads(manifest.read_text())
    manifest.chmod(0o644)
    manifest.write_text(json.dumps({**data, "status": "running"}))
    with pytest.raises(ModelNotFound):
        registry.get(v.id)
    assert registry.active().id == BASE_ID  # ACTIVE points at it, but it is not finished
    for bad in ("m-nope", "../etc", "m-20261125T234500Z-ab12cd34"):
        with pytest.raises(ModelNotFound):
            registry.activate(bad)
