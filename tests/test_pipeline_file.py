"""Head files: every head round-trips as plain data, and nothing in a hostile file gets to run."""

import io
import json
import zipfile

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression, Ridge, RidgeClassifier, SGDClassifier, SGDRegressor
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler
from sklearn.svm import SVC, SVR, LinearSVC, LinearSVR

from featcache import pipeline_file
from featcache.errors import InputError, UntrustedFileError

rng = np.random.default_rng(0)
X = rng.normal(size=(90, 6))
Y_CLASS = np.array(["cat", "dog", "owl"])[np.arange(90) % 3]  # string classes survive too
Y_REG = X @ rng.normal(size=6)


@pytest.mark.parametrize("est", [LogisticRegression(C=0.3), RidgeClassifier(), LinearSVC(), SVC(kernel="rbf"),
                                 SGDClassifier(loss="log_loss", random_state=0), Ridge(), LinearSVR(), SVR(),
                                 SGDRegressor(random_state=0)], ids=lambda e: type(e).__name__)
def test_every_head_round_trips_exactly(tmp_path, est):
    from sklearn.base import is_regressor

    y = Y_REG if is_regressor(est) else Y_CLASS
    pipe = Pipeline([("scale", StandardScaler()), ("head", est)]).fit(X, y)
    pipeline_file.dump(pipe, tmp_path / "h.head")
    again = pipeline_file.load(tmp_path / "h.head")
    assert [type(s) for _, s in again.steps] == [type(s) for _, s in pipe.steps]
    np.testing.assert_array_equal(again.predict(X), pipe.predict(X))
    if hasattr(pipe, "decision_function"):
        np.testing.assert_array_equal(again.decision_function(X), pipe.decision_function(X))
    assert again.get_params(deep=False).keys() == pipe.get_params(deep=False).keys()


def test_objects_outside_the_list_cannot_be_saved(tmp_path):
    pipe = Pipeline([("f", FunctionTransformer(np.log1p))]).fit(np.abs(X))
    with pytest.raises(TypeError, match="cannot be saved"):
        pipeline_file.dump(pipe, tmp_path / "h.head")


def _rewrite(src, dst, **members):
    with zipfile.ZipFile(src) as a, zipfile.ZipFile(dst, "w") as b:
        for name in a.namelist():
            if name not in members:
                b.writestr(name, a.read(name))
        for name, data in members.items():
            if data is not None:
                b.writestr(name, data)


@pytest.fixture
def good(tmp_path):
    pipe = Pipeline([("scale", StandardScaler()), ("head", LogisticRegression())]).fit(X, Y_CLASS)
    pipeline_file.dump(pipe, tmp_path / "good.head")
    return tmp_path / "good.head"


def test_hostile_files_are_refused_with_one_clear_error(good, tmp_path):
    meta = json.loads(zipfile.ZipFile(good).read("head.json"))
    bad = tmp_path / "bad.head"

    evil = json.loads(json.dumps(meta))
    evil["tree"]["object"] = "os.system"
    _rewrite(good, bad, **{"head.json": json.dumps(evil)})
    with pytest.raises(UntrustedFileError, match="os.system"):
        pipeline_file.load(bad)

    pickled = io.BytesIO()
    np.save(pickled, np.array([object()], dtype=object), allow_pickle=True)  # an object array needs unpickling
    _rewrite(good, bad, **{"arrays/a0.npy": pickled.getvalue()})
    with pytest.raises(InputError, match="a0.npy"):
        pipeline_file.load(bad)

    for text in ("not json", json.dumps([1, 2]), json.dumps({**meta, "version": 99}),
                 json.dumps({**meta, "tree": {"weird": 1}}), json.dumps({**meta, "tree": {"list": 5}})):
        _rewrite(good, bad, **{"head.json": text})
        with pytest.raises(InputError):
            pipeline_file.load(bad)
    _rewrite(good, bad, **{"arrays/a0.npy": None})
    with pytest.raises(InputError, match="missing"):
        pipeline_file.load(bad)
    deep = {"list": []}
    node = deep
    for _ in range(60):
        node["list"].append({"list": []})
        node = node["list"][0]
    _rewrite(good, bad, **{"head.json": json.dumps({**meta, "tree": deep})})
    with pytest.raises(InputError, match="deeply"):
        pipeline_file.load(bad)
    bad.write_bytes(b"\x80\x04K\x01.")  # a pickle is not a head file
    assert not pipeline_file.is_head_file(bad)
    with pytest.raises(InputError):
        pipeline_file.load(bad)
