"""The ``skdigits`` command line, driven through ``skdigits.cli.main``.

All data is generated here: scikit-learn's 8 x 8 digits upscaled to Kaggle's
28 x 28 CSV layout, and PNG folders written with Pillow (dark ink on paper).
"""

import io
import os
import pickle
import re
import signal
import subprocess
import sys
import threading
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
import skops.io as sio
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.pipeline import Pipeline

import skdigits
from skdigits import NumpyCNNClassifier, NumpyMLPClassifier, cli
from skdigits.data import ImageTransformer, load_image_folder
from skdigits.persistence import load_model, save_model

REPO = Path(skdigits.__file__).resolve().parent.parent
PIXELS = ",".join(f"pixel{i}" for i in range(784))
FAST = ["--hidden", "16", "--epochs", "3", "--random-state", "0"]


# ----------------------------------------------------------------- data
def upscaled_digits(n, offset=0):
    """(images (n, 28, 28) uint8 ink high, labels) from load_digits, balanced by class."""
    digits = load_digits()
    images, labels = digits.images[offset:offset + n], digits.target[offset:offset + n]
    big = np.kron(images, np.ones((3, 3)))  # 24 x 24
    canvas = np.zeros((len(images), 28, 28))
    canvas[:, 2:26, 2:26] = big
    return np.round(canvas * (255 / 16)).astype(np.uint8), labels


def write_csv(path, images, labels=None):
    rows = images.reshape(len(images), -1)
    lines = [("label," if labels is not None else "") + PIXELS]
    for i, row in enumerate(rows):
        values = ",".join(map(str, row))
        lines.append(values if labels is None else f"{labels[i]},{values}")
    path.write_text("\n".join(lines) + "\n")
    return path


def write_folder(root, images, labels, nested=False):
    """root/<label>/img_<i>.png, dark digits on white paper, 32 x 32."""
    for i, (image, label) in enumerate(zip(images, labels)):
        folder = root / str(label)
        if nested and i % 4 == 0:
            folder = folder / "more"
        folder.mkdir(parents=True, exist_ok=True)
        paper = np.full((32, 32), 255, np.uint8)
        paper[2:30, 2:30] = 255 - image
        Image.fromarray(paper).save(folder / f"img_{i}.png")
    (root / str(labels[0]) / ".hidden.png").write_bytes(b"not an image")
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_data")
    train_images, train_labels = upscaled_digits(300)
    test_images, test_labels = upscaled_digits(40, offset=1000)
    keep = np.isin(test_labels, [3, 5, 7])
    paths = types.SimpleNamespace(
        root=root,
        train=write_csv(root / "train.csv", train_images, train_labels),
        test=write_csv(root / "test.csv", test_images),
        labelled=write_csv(root / "labelled.csv", test_images, test_labels),
        folder=write_folder(root / "folder", test_images[keep], test_labels[keep], nested=True),
        n_test=len(test_labels),
    )
    np.savez(root / "digits.npz", X_train=train_images, y_train=train_labels,
             X_test=test_images, y_test=test_labels)
    paths.npz = root / "digits.npz"
    return paths


def run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(err, *fragments):
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("skdigits ")
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.fixture(scope="module")
def model(data):
    path = data.root / "model.skops"
    assert cli.main(["train", str(data.train), "-o", str(path), "--hidden", "32",
                     "--epochs", "30", "--random-state", "0"]) == 0
    return path


# ----------------------------------------------------------------- help and usage
def test_python_m_help():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(REPO)] + [p for p in [os.environ.get("PYTHONPATH")] if p])}
    result = subprocess.run([sys.executable, "-m", "skdigits", "--help"], capture_output=True,
                            text=True, env=env, timeout=60)
    assert result.returncode == 0
    for command in ("compare", "train", "predict", "evaluate"):
        assert command in result.stdout


@pytest.mark.parametrize("argv, expected", [
    ([], ["compare", "train", "predict", "evaluate", "Exit codes"]),
    (["train"], ["--model", "--validation", "--epochs", "--batch-size", "--learning-rate",
                 "--alpha", "--random-state", "Ctrl-C"]),
    (["predict"], ["ImageId,Label", "filename,label", "-m MODEL", "-o OUT"]),
    (["evaluate"], ["--plots", "confusion_matrix.png", "misclassified.png"]),
    (["compare"], ["--cv", "--plot"]),
])
def test_help_everywhere(capsys, argv, expected):
    code, out, _ = run(capsys, *argv, "--help")
    assert code == 0
    text = " ".join(out.split())
    for fragment in expected:
        assert fragment in text


@pytest.mark.parametrize("argv, fragment", [
    (["frobnicate"], "invalid choice"),
    (["train", "x.csv"], "-o/--output"),
    (["train", "x.csv", "-o", "m.skops", "--validation", "1.5"], "--validation"),
    (["train", "x.csv", "-o", "m.skops", "--epochs", "0"], "--epochs"),
    (["train", "x.csv", "-o", "m.skops", "--batch-size", "big"], "--batch-size"),
    (["train", "x.csv", "-o", "m.skops", "--learning-rate", "-1"], "--learning-rate"),
    (["train", "x.csv", "-o", "m.skops", "--model", "rnn"], "--model"),
    (["predict", "x.csv", "-o", "out.csv"], "-m/--model"),
])
def test_usage_errors_exit_2(capsys, argv, fragment):
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert fragment in err and "Traceback" not in err


# ----------------------------------------------------------------- train
def test_train_csv(capsys, data, tmp_path):
    path = tmp_path / "m.skops"
    code, out, err = run(capsys, "train", data.train, "-o", path, *FAST)
    assert code == 0, err
    assert "270 for training, 30 held out for validation" in out
    assert "Validation accuracy: " in out and f"Saved {path}" in out
    assert [line.split()[1] for line in err.splitlines() if line.startswith("epoch")] == \
        ["1/3", "2/3", "3/3"]
    assert "val " in err.splitlines()[0]
    model = load_model(path)
    assert isinstance(model, Pipeline) and isinstance(model[0], ImageTransformer)
    clf = model[-1]
    assert isinstance(clf, NumpyMLPClassifier)
    assert clf.hidden_layer_sizes == (16,) and clf.max_iter == 3
    assert len(clf.validation_scores_) == len(clf.loss_curve_) == clf.n_iter_ == 3
    assert not hasattr(clf, "_skl_callbacks")  # the progress display is not saved
    # the reported accuracy is the last per-epoch validation score
    reported = float(out.split("Validation accuracy: ")[1].split()[0])
    assert reported == pytest.approx(clf.validation_scores_[-1], abs=1e-4)


def test_train_without_validation(capsys, data, tmp_path):
    code, out, err = run(capsys, "train", data.train, "-o", tmp_path / "m.skops",
                         "--validation", "0", *FAST)
    assert code == 0
    assert "all 300 for training" in out and "Validation accuracy" not in out
    assert "val " not in err
    assert load_model(tmp_path / "m.skops")[-1].validation_scores_ is None


def test_train_npz_and_image_folder(capsys, data, tmp_path):
    code, out, _ = run(capsys, "train", data.npz, "-o", tmp_path / "a.skops", *FAST)
    assert code == 0 and "[X_train, y_train] (300 images)" in out
    code, out, _ = run(capsys, "train", data.folder, "-o", tmp_path / "b.skops",
                       "--validation", "0", *FAST)
    assert code == 0 and "image folder" in out
    model = load_model(tmp_path / "b.skops")
    assert set(model[-1].classes_) == {3, 5, 7}  # folder names '3', '5', '7' -> integers


def test_image_folder_rows_equal_the_saved_preprocessing(data):
    """train uses load_image_folder's rows; the model re-reads files with ImageTransformer."""
    bunch = load_image_folder(data.folder)
    np.testing.assert_array_equal(ImageTransformer().transform(list(bunch.filenames)),
                                  bunch.data)


def test_train_options_reach_the_estimator(capsys, data, tmp_path):
    code, _, _ = run(capsys, "train", data.train, "-o", tmp_path / "m.skops", "--hidden", "12",
                     "8", "--epochs", "2", "--batch-size", "64", "--learning-rate", "0.01",
                     "--alpha", "0.5", "--random-state", "3")
    assert code == 0
    params = load_model(tmp_path / "m.skops")[-1].get_params()
    assert params["hidden_layer_sizes"] == (12, 8) and params["max_iter"] == 2
    assert params["batch_size"] == 64 and params["learning_rate_init"] == 0.01
    assert params["alpha"] == 0.5 and params["random_state"] == 3


def test_train_cnn(capsys, data, tmp_path, monkeypatch):
    images, labels = upscaled_digits(40)
    small = write_csv(tmp_path / "small.csv", images, labels)
    code, out, err = run(capsys, "train", small, "-o", tmp_path / "cnn.skops",
                         "--model", "cnn", "--epochs", "1", "--validation", "0")
    assert code == 0, err
    assert isinstance(load_model(tmp_path / "cnn.skops")[-1], NumpyCNNClassifier)
    # Without the CNN: a clear usage error.
    monkeypatch.setitem(sys.modules, "skdigits.cnn", None)
    monkeypatch.delattr(skdigits, "NumpyCNNClassifier", raising=False)
    code, _, err = run(capsys, "train", data.train, "-o", tmp_path / "x.skops", "--model", "cnn")
    assert code == 2
    assert_one_line_error(err, "NumpyCNNClassifier", "--model mlp")


@pytest.mark.parametrize("make_argv, fragments", [
    (lambda d, t: ["train", t / "missing.csv", "-o", t / "m.skops"], ["no such file"]),
    (lambda d, t: ["train", d.train, "-o", t / "no" / "dir" / "m.skops"], ["does not exist"]),
    (lambda d, t: ["train", d.train, "-o", t], ["is a folder"]),
    (lambda d, t: ["train", d.test, "-o", t / "m.skops"], ["no 'label' column"]),
    (lambda d, t: ["train", d.train, "-o", t / "m.skops", "--validation", "0.01"],
     ["cannot hold out", "--validation 0"]),
    (lambda d, t: ["train", d.root / "notes.txt", "-o", t / "m.skops"], ["expected a Kaggle"]),
    (lambda d, t: ["train", d.root / "bad.csv", "-o", t / "m.skops"], ["bad.csv"]),
])
def test_train_data_errors_exit_1(capsys, data, tmp_path, make_argv, fragments):
    (data.root / "notes.txt").write_text("hello")
    (data.root / "bad.csv").write_text("label,pixel0\n1,2\n")
    code, _, err = run(capsys, *make_argv(data, tmp_path))
    assert code == 1
    assert_one_line_error(err, *fragments)
    assert not (tmp_path / "m.skops").exists()


# ----------------------------------------------------------------- Ctrl-C
posix_signals = pytest.mark.skipif(sys.platform == "win32", reason="POSIX SIGINT semantics")


@posix_signals
def test_ctrl_c_during_train_saves_the_model(capsys, data, tmp_path, monkeypatch):
    """A real SIGINT to this process after epoch 2: the estimator's handler
    stops at the next mini-batch, the CLI saves what it has and exits 130."""
    original = cli.EpochProgress.on_fit_task_end
    sent = []

    def interrupting(self, estimator, context, *, metadata=None, fitted_estimator=None):
        stop = original(self, estimator, context, metadata=metadata,
                        fitted_estimator=fitted_estimator)
        if context.task_name == "epoch" and len(self.losses) == 2:
            # Only ever signal while the estimator's own handler is installed.
            assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler
            sent.append(True)
            os.kill(os.getpid(), signal.SIGINT)
        return stop

    monkeypatch.setattr(cli.EpochProgress, "on_fit_task_end", interrupting)
    path = tmp_path / "m.skops"
    code, out, err = run(capsys, "train", data.train, "-o", path, "--hidden", "16",
                         "--epochs", "50", "--batch-size", "32")
    assert sent == [True]
    assert code == 130
    assert "Stopped during epoch 3 (2 complete epochs)" in out
    assert f"Interrupted: saved the model trained so far to {path}" in out
    assert "Traceback" not in err
    clf = load_model(path)[-1]
    assert clf.n_iter_ == 2 and len(clf.loss_curve_) == 2 and len(clf.validation_scores_) == 2
    assert load_model(path).predict(np.zeros((1, 784))).shape == (1,)


@posix_signals
def test_ctrl_c_in_a_terminal_process(data, tmp_path):
    """`python -m skdigits train`, Ctrl-C (SIGINT) once the first epoch is reported."""
    path = tmp_path / "m.skops"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(REPO)] + [p for p in [os.environ.get("PYTHONPATH")] if p])}
    with subprocess.Popen(
            [sys.executable, "-m", "skdigits", "train", str(data.train), "-o", str(path),
             "--hidden", "256", "--epochs", "5000", "--batch-size", "16"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) as proc:
        timer = threading.Timer(60, proc.kill)
        timer.start()
        try:
            first = proc.stderr.readline()
            assert re.match(r"epoch +1/5000 ", first), first
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=60)
        finally:
            timer.cancel()
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 130, err
    assert "Interrupted: saved the model trained so far" in out
    assert "Traceback" not in err
    assert 1 <= load_model(path)[-1].n_iter_ < 5000


def test_ctrl_c_outside_training_saves_nothing(capsys, data, tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "read_labelled", interrupted)
    code, _, err = run(capsys, "train", data.train, "-o", tmp_path / "m.skops")
    assert code == 130
    assert "interrupted; nothing was saved" in err
    assert not (tmp_path / "m.skops").exists()


# ----------------------------------------------------------------- progress display
def test_progress_bar_on_a_terminal():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    stream = Terminal()
    progress = cli.EpochProgress(stream)
    root = types.SimpleNamespace(task_name="fit", max_subtasks=4)
    epoch = types.SimpleNamespace(task_name="epoch")
    progress.setup(None, root)
    for loss in (0.9, 0.5):
        progress.on_fit_task_begin(None, epoch)
        progress.on_fit_task_end(None, epoch, metadata={"loss": loss})
    progress.on_fit_task_end(None, root, metadata=None)
    progress.teardown(None, root)
    text = stream.getvalue()
    frames = text.split("\r")
    assert frames[1].startswith("epoch 1/4 [" + "-" * 24 + "]")
    assert "epoch 2/4 [" + "#" * 12 + "-" * 12 + "]  loss 0.5000" in text
    assert "left" in frames[-1] and text.endswith("\n")


def test_progress_lines_elsewhere():
    stream = io.StringIO()
    X_val, y_val = np.zeros((4, 2)), np.array([1, 1, 0, 1])
    fitted = types.SimpleNamespace(predict=lambda X: np.ones(len(X), int))
    progress = cli.EpochProgress(stream, X_val, y_val)
    progress.setup(None, types.SimpleNamespace(task_name="fit", max_subtasks=10))
    progress.on_fit_task_end(None, types.SimpleNamespace(task_name="epoch"),
                             metadata={"loss": 1.25}, fitted_estimator=fitted)
    line = stream.getvalue()
    assert line.startswith("epoch  1/10  loss 1.2500  val 0.7500  ") and line.endswith(" s\n")
    assert "\r" not in line and progress.scores == [0.75]


# ----------------------------------------------------------------- predict
def test_predict_kaggle_submission(capsys, data, model, tmp_path):
    out_path = tmp_path / "submission.csv"
    code, out, err = run(capsys, "predict", data.test, "-m", model, "-o", out_path)
    assert code == 0, err
    lines = out_path.read_text().splitlines()
    assert lines[0] == "ImageId,Label"
    assert len(lines) == data.n_test + 1
    ids, labels = zip(*(line.split(",") for line in lines[1:]))
    assert [int(i) for i in ids] == list(range(1, data.n_test + 1))
    assert {int(label) for label in labels} <= set(range(10))
    assert f"Wrote {data.n_test} predictions" in out


def test_predict_npz_uses_the_test_split(capsys, data, model, tmp_path):
    code, out, _ = run(capsys, "predict", data.npz, "-m", model, "-o", tmp_path / "s.csv")
    assert code == 0 and "[X_test]" in out
    assert len((tmp_path / "s.csv").read_text().splitlines()) == data.n_test + 1


def test_predict_images(capsys, data, model, tmp_path):
    one_file = next((data.folder / "5").glob("*.png"))
    out_path = tmp_path / "labels.csv"
    code, out, err = run(capsys, "predict", data.folder, one_file, "-m", model, "-o", out_path)
    assert code == 0, err
    lines = out_path.read_text().splitlines()
    expected = sorted(str(p) for p in data.folder.rglob("*.png") if not p.name.startswith("."))
    assert lines[0] == "filename,label"
    names = [line.rsplit(",", 1)[0] for line in lines[1:]]
    assert sorted(names[:-1]) == expected and names[-1] == str(one_file)
    assert all(line.rsplit(",", 1)[1].isdigit() for line in lines[1:])


@pytest.mark.parametrize("make_argv, code_expected, fragments", [
    (lambda d, m, t: ["predict", d.test, "-m", t / "none.skops", "-o", t / "o.csv"], 1,
     ["no such model file"]),
    (lambda d, m, t: ["predict", d.root / "nope.csv", "-m", m, "-o", t / "o.csv"], 1,
     ["no such file"]),
    (lambda d, m, t: ["predict", d.test, d.folder, "-m", m, "-o", t / "o.csv"], 2,
     ["one .csv or .npz"]),
    (lambda d, m, t: ["predict", d.test, "-m", m, "-o", t / "x" / "o.csv"], 1,
     ["does not exist"]),
    (lambda d, m, t: ["predict", d.root / "empty", "-m", m, "-o", t / "o.csv"], 1,
     ["no image files"]),
])
def test_predict_errors(capsys, data, model, tmp_path, make_argv, code_expected, fragments):
    (data.root / "empty").mkdir(exist_ok=True)
    code, _, err = run(capsys, *make_argv(data, model, tmp_path))
    assert code == code_expected
    assert_one_line_error(err, *fragments)
    assert not (tmp_path / "o.csv").exists()


class Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_unsafe_model_files_are_refused(capsys, data, tmp_path):
    marker = tmp_path / "pwned"
    pickled = tmp_path / "model.skops"
    pickled.write_bytes(pickle.dumps(Payload(marker)))
    code, _, err = run(capsys, "predict", data.test, "-m", pickled, "-o", tmp_path / "o.csv")
    assert code == 1
    assert_one_line_error(err, "pickle or joblib", "not loaded")
    assert not marker.exists()

    unknown = tmp_path / "unknown.skops"
    sio.dump({"estimator": Pipeline([("f", ImageTransformer())]), "extra": Payload(marker)},
             unknown)
    code, _, err = run(capsys, "evaluate", data.labelled, "-m", unknown)
    assert code == 1
    assert_one_line_error(err, "allow-list", "Payload")
    assert not marker.exists()


def test_bare_estimator_model_cannot_read_images(capsys, data, tmp_path):
    X, y = upscaled_digits(50)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf = NumpyMLPClassifier((4,), max_iter=1).fit(X.reshape(50, -1) / 255, y)
    path = save_model(clf, tmp_path / "bare.skops")
    code, _, err = run(capsys, "predict", data.folder, "-m", path, "-o", tmp_path / "o.csv")
    assert code == 1
    assert_one_line_error(err, "no image preprocessing")


# ----------------------------------------------------------------- evaluate
def test_evaluate_with_plots(capsys, data, model, tmp_path):
    plots = tmp_path / "plots" / "nested"
    code, out, err = run(capsys, "evaluate", data.labelled, "-m", model, "--plots", plots)
    assert code == 0, err
    assert "Accuracy: " in out and f"of {data.n_test})" in out
    assert "precision" in out and "recall" in out
    assert "Confusion matrix (rows: true class, columns: predicted class)" in out
    table = out.split("Confusion matrix")[1].splitlines()[2:12]
    counts = np.array([[int(v) for v in row.split()[1:]] for row in table])
    assert counts.sum() == data.n_test
    accuracy = float(out.split("Accuracy: ")[1].split()[0])
    assert counts.trace() / data.n_test == pytest.approx(accuracy, abs=1e-4)
    for name in ("confusion_matrix.png", "learning_curves.png", "misclassified.png"):
        content = (plots / name).read_bytes()
        assert content[:8] == b"\x89PNG\r\n\x1a\n" and len(content) > 5000
    assert "Saved " in out


def test_evaluate_image_folder_and_npz(capsys, data, model):
    code, out, _ = run(capsys, "evaluate", data.folder, "-m", model)
    assert code == 0 and "image folder" in out and "Accuracy: " in out
    code, out, _ = run(capsys, "evaluate", data.npz, "-m", model)
    assert code == 0 and "[X_test, y_test]" in out


def test_evaluate_needs_labels(capsys, data, model):
    code, _, err = run(capsys, "evaluate", data.test, "-m", model)
    assert code == 1
    assert_one_line_error(err, "no 'label' column")


# ----------------------------------------------------------------- compare
def test_compare_with_plot(capsys, data, tmp_path):
    path = tmp_path / "compare.png"
    code, out, err = run(capsys, "compare", data.train, "--cv", "2", "--max-iter", "3",
                         "--hidden", "8", "--plot", path)
    assert code == 0, err
    assert "skdigits NumpyMLPClassifier" in out and "sklearn MLPClassifier" in out
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_plot_folder_checked_first(capsys, data, tmp_path):
    code, out, err = run(capsys, "compare", data.train, "--plot", tmp_path / "no" / "c.png")
    assert code == 1 and out == ""
    assert_one_line_error(err, "does not exist")
