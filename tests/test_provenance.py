import numpy as np
import pytest

from sae_fast.provenance import SettingsMismatch, differences, require_same, settings_digest, sha256_file, to_jsonable


def test_sha256_file_streams_whole_file(tmp_path):
    import hashlib
    data = np.random.default_rng(0).bytes(3 * 1024 + 7)
    p = tmp_path / "b"
    p.write_bytes(data)
    assert sha256_file(p, chunk=1000) == hashlib.sha256(data).hexdigest()


def test_differences_and_require_same():
    assert differences({"a": 1, "b": (1, 2)}, {"a": 1, "b": [1, 2]}) == []
    diff = differences({"a": 1}, {"a": 2, "c": 3})
    assert diff == ["a: saved 1, requested 2", "c: saved None, requested 3"]
    with pytest.raises(SettingsMismatch, match=r"stability in /x was made with other settings \(a: saved 1"):
        require_same({"a": 1}, {"a": 2}, what="stability", where="/x", hint="use --redo")
    require_same({"a": 1, "t": 5}, {"a": 1, "t": 6}, what="x", where="y", hint="z", ignore=["t"])


def test_to_jsonable_and_digest():
    assert to_jsonable({"x": np.float32(1.5), "y": np.arange(2), "z": float("nan")}) == {"x": 1.5, "y": [0, 1],
                                                                                          "z": None}
    assert settings_digest({"a": 1, "b": 2}) == settings_digest({"b": 2, "a": 1})
    assert settings_digest({"a": 1}) != settings_digest({"a": 2})
