"""The ``skdigits`` command line, driven through ``skdigits.cli.main``.

All data is generated here: scikit-learn's 8 x 8 digits upscaled to Kaggle's
28 x 28 CSV layout, and PNG folders written with Pillow (dark ink on paper).
Any warning that reaches pytest fails the test: the command shows the
estimator's warnings itself, and tests that expect one catch it.
"""

import errno
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
import skdigits.data.datasets
from skdigits import NumpyCNNClassifier, NumpyMLPClassifier, cli
from skdigits.data import ImageTransformer, _atomic, load_image_folder
from skdigits.persistence import load_model, save_model
from conftest import write_kaggle_csv

pytestmark = pytest.mark.filterwarnings("error")

REPO = Path(skdigits.__file__).resolve().parent.parent
FAST = ["--hidden", "16", "--epochs", "3", "--random-state", "0"]
posix_signals = pytest.mark.skipif(sys.platform == "win32", reason="POSIX SIGINT semantics")


def repo_env():
    """The environment for a subprocess that imports this checkout of skdigits."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(REPO)] + [p for p in [os.environ.get("PYTHONPATH")] if p])}


# ----------------------------------------------------------------- data
def upscaled_digits(n, offset=0):
    """(images (n, 28, 28) uint8 ink high, labels) from load_digits, balanced by class."""
    digits = load_digits()
    images, labels = digits.images[offset:offset + n], digits.target[offset:offset + n]
    big = np.kron(images, np.ones((3, 3)))  # 24 x 24
    canvas = np.zeros((len(images), 28, 28))
    canvas[:, 2:26, 2:26] = big
    return np.round(canvas * (255 / 16)).astype(np.uint8), labels


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
        train=write_kaggle_csv(root / "train.csv", train_images, train_labels),
        test=write_kaggle_csv(root / "test.csv", test_images),
        labelled=write_kaggle_csv(root / "labelled.csv", test_images, test_labels),
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
    result = subprocess.run([sys.executable, "-m", "skdigits", "--help"], capture_output=True,
                            text=True, env=repo_env(), timeout=60)
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
    assert len(clf.loss_curve_) == clf.n_iter_ == 3
    assert not hasattr(clf, "_skl_callbacks")  # the progress display is not saved
    # Only the estimator writes fitted attributes: without early_stopping it has none.
    assert clf.validation_scores_ is None
    # the reported accuracy is the last per-epoch validation score
    reported = float(out.split("Validation accuracy: ")[1].split()[0])
    last_epoch = [line for line in err.splitlines() if line.startswith("epoch")][-1]
    assert f"val {reported:.4f}" in last_epoch


def test_train_without_validation(capsys, data, tmp_path):
    code, out, err = run(capsys, "train", data.train, "-o", tmp_path / "m.skops",
                         "--validation", "0", *FAST)
    assert code == 0
    assert "all 300 for training" in out and "Validation accuracy" not in out
    assert "val " not in err
    assert load_model(tmp_path / "m.skops")[-1].validation_scores_ is None


def test_train_reports_how_it_stopped_and_each_warning_once(capsys, data, tmp_path):
    code, out, err = run(capsys, "train", data.train, "-o", tmp_path / "m.skops", *FAST,
                         "--lr-schedule", "none")
    assert code == 0
    assert "Trained 3 epochs in " in out and "(stopped by --epochs)" in out
    # The estimator's own ConvergenceWarning text, once; no advice of our own.
    warned = [line for line in err.splitlines() if line.startswith("Warning: ")]
    assert len(warned) == 1 and "Maximum iterations (3) reached" in warned[0]


def test_default_recipe_runs_its_schedule_to_the_end_without_warning(capsys, data, tmp_path):
    from skdigits import load_model

    path = tmp_path / "m.skops"
    code, out, err = run(capsys, "train", data.train, "-o", path, *FAST)
    assert code == 0 and "(stopped by --epochs)" in out
    assert not [line for line in err.splitlines() if line.startswith("Warning: ")]
    clf = load_model(path).steps[-1][1]
    assert (clf.batch_norm, clf.augment, clf.lr_schedule) == (True, "elastic", "one-cycle")
    code, out, err = run(capsys, "train", data.train, "-o", path, *FAST, "--augment", "none",
                         "--no-batch-norm")
    clf = load_model(path).steps[-1][1]
    assert code == 0 and (clf.batch_norm, clf.augment) == (False, None)


@pytest.mark.parametrize("model, hidden, epochs", [("mlp", (800,), 40), ("cnn", (128,), 20)])
def test_default_recipe_sizes_and_epochs_per_model(model, hidden, epochs):
    from skdigits.cli import _make_classifier, build_parser

    args = build_parser().parse_args(["train", "train.csv", "-o", "m.skops", "--model", model])
    clf = _make_classifier(args)
    assert (clf.hidden_layer_sizes, clf.max_iter, clf.augment) == (hidden, epochs, "elastic")
    args = build_parser().parse_args(["train", "train.csv", "-o", "m.skops", "--model", model,
                                      "--epochs", "7", "--hidden", "9"])
    assert (_make_classifier(args).max_iter, _make_classifier(args).hidden_layer_sizes) == (7, (9,))


def test_diverging_training_is_an_error_and_saves_nothing(capsys, data, tmp_path):
    """--learning-rate 1e6 once saved a 10%-accurate model with "more --epochs may help"."""
    path = tmp_path / "d.skops"
    path.write_bytes(b"an earlier model")
    code, out, err = run(capsys, "train", data.train, "-o", path, "--learning-rate", "1e6",
                         "--epochs", "3")
    assert code == 1
    assert "Traceback" not in err and "more --epochs" not in err + out
    assert err.count("Training is diverging") == 1  # the estimator's warning, once
    last = err.strip().splitlines()[-1]
    assert last.startswith("skdigits train: error: training diverged")
    assert "--learning-rate" in last and "not saved" in last
    assert "Saved" not in out
    assert path.read_bytes() == b"an earlier model"


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
    small = write_kaggle_csv(tmp_path / "small.csv", images, labels)
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
    assert clf.n_iter_ == 2 and len(clf.loss_curve_) == 2 and clf.stop_reason_ == "interrupted"
    assert load_model(path).predict(np.zeros((1, 784))).shape == (1,)


@posix_signals
def test_ctrl_c_in_a_terminal_process(data, tmp_path):
    """`python -m skdigits train`, Ctrl-C (SIGINT) once the first epoch is reported."""
    path = tmp_path / "m.skops"
    env = repo_env()
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

    monkeypatch.setattr(skdigits.data.datasets, "read_labelled", interrupted)
    code, _, err = run(capsys, "train", data.train, "-o", tmp_path / "m.skops")
    assert code == 130
    assert "interrupted; nothing was saved" in err
    assert not (tmp_path / "m.skops").exists()


@posix_signals
def test_ctrl_c_during_the_final_validation_still_saves(capsys, data, tmp_path, monkeypatch):
    """Once training is over, a Ctrl-C (say, a second press) no longer loses the model."""
    state = {"fitted": False, "sent": 0}
    real_fit, real_predict = NumpyMLPClassifier.fit, NumpyMLPClassifier.predict

    def fit(self, *args, **kwargs):
        result = real_fit(self, *args, **kwargs)
        state["fitted"] = True
        return result

    def predict(self, X):
        if state["fitted"] and not state["sent"]:  # the held-out accuracy after training
            state["sent"] += 1
            os.kill(os.getpid(), signal.SIGINT)
        return real_predict(self, X)

    monkeypatch.setattr(NumpyMLPClassifier, "fit", fit)
    monkeypatch.setattr(NumpyMLPClassifier, "predict", predict)
    path = tmp_path / "m.skops"
    code, out, err = run(capsys, "train", data.train, "-o", path, *FAST)
    assert state["sent"] == 1
    assert code == 130, err
    assert "finishing the save" in err and "Traceback" not in err
    assert "Validation accuracy" in out
    assert f"Interrupted: saved the model trained so far to {path}" in out
    assert load_model(path)[-1].n_iter_ == 3


def interrupt_save(monkeypatch, presses):
    """Press Ctrl-C `presses` times as save_model starts."""
    import skdigits.persistence

    real_save = skdigits.persistence.save_model

    def save_model(model, path):
        for _ in range(presses):
            os.kill(os.getpid(), signal.SIGINT)
        return real_save(model, path)

    monkeypatch.setattr(skdigits.persistence, "save_model", save_model)


@posix_signals
def test_one_ctrl_c_during_the_save_finishes_it(capsys, data, tmp_path, monkeypatch):
    interrupt_save(monkeypatch, presses=1)
    path = tmp_path / "m.skops"
    code, out, err = run(capsys, "train", data.train, "-o", path, *FAST)
    assert code == 130
    assert f"finishing the save of {path}" in err
    assert f"Interrupted: saved the model trained so far to {path}" in out
    assert load_model(path)[-1].n_iter_ == 3


@posix_signals
def test_a_second_ctrl_c_abandons_the_save_and_keeps_the_old_file(capsys, data, tmp_path,
                                                                   monkeypatch):
    interrupt_save(monkeypatch, presses=2)
    path = tmp_path / "m.skops"
    path.write_bytes(b"the previous model")
    code, out, err = run(capsys, "train", data.train, "-o", path, *FAST)
    assert code == 130
    last = err.strip().splitlines()[-1]
    assert last == f"skdigits train: interrupted; the save was abandoned: {path} keeps its " \
                   "previous content"
    assert path.read_bytes() == b"the previous model"
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_importing_the_entry_point_loads_nothing_heavy():
    """`skdigits` answers Ctrl-C from its first moments: NumPy and the rest load inside main."""
    code = ("import sys, skdigits.cli, skdigits.__main__\n"
            "heavy = {'numpy', 'scipy', 'sklearn', 'pandas', 'PIL', 'skops', 'matplotlib'}\n"
            "print(sorted(heavy & {name.split('.')[0] for name in sys.modules}))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=repo_env(), timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@posix_signals
@pytest.mark.parametrize("argv, module", [(["train", "train.csv", "-o", "m.skops"], "numpy"),
                                          (["compare"], "sklearn")])
def test_ctrl_c_while_importing_is_one_line_and_exit_130(argv, module, tmp_path):
    """The console script's own steps, with Ctrl-C landing as NumPy or scikit-learn load."""
    code = (
        "import sys\n"
        "class CtrlC:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name.split('.')[0] == {module!r}:\n"
        "            raise KeyboardInterrupt\n"
        "sys.meta_path.insert(0, CtrlC())\n"
        "from skdigits.cli import main\n"
        f"sys.exit(main({argv!r}))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=repo_env(), cwd=tmp_path, timeout=60)
    assert result.returncode == 130, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "interrupted" in lines[0], result.stderr


# ----------------------------------------------------------------- progress display
class Terminal(io.StringIO):
    def isatty(self):
        return True


def feed_epochs(progress, losses, total=4, fitted=None):
    """Drive `progress` through scikit-learn's callback hooks as a fit would."""
    root = types.SimpleNamespace(task_name="fit", max_subtasks=total)
    epoch = types.SimpleNamespace(task_name="epoch")
    progress.setup(None, root)
    curve = []
    for loss in losses:
        curve.append(loss)
        # The snapshot scikit-learn hands over carries the loss curve so far.
        snapshot = types.SimpleNamespace(loss_curve_=list(curve),
                                         predict=getattr(fitted, "predict", None))
        progress.on_fit_task_begin(None, epoch)
        progress.on_fit_task_end(None, epoch, metadata=None,
                                 fitted_estimator=snapshot)
    progress.on_fit_task_end(None, root, metadata=None)
    progress.teardown(None, root)


def test_progress_bar_on_a_terminal_is_rich():
    pytest.importorskip("rich")
    stream = Terminal()
    progress = cli.EpochProgress(stream)
    feed_epochs(progress, (0.9, 0.5))
    text = stream.getvalue()
    assert "epoch 2/4" in text and "loss 0.5000" in text
    assert "\u2501" in text  # rich's bar
    assert progress.losses == [0.9, 0.5]


def test_progress_on_a_terminal_without_rich_is_plain_lines(monkeypatch):
    monkeypatch.setitem(sys.modules, "rich", None)
    monkeypatch.setitem(sys.modules, "rich.console", None)
    monkeypatch.setitem(sys.modules, "rich.progress", None)
    stream = Terminal()
    feed_epochs(cli.EpochProgress(stream), (0.9, 0.5))
    assert stream.getvalue().splitlines()[1].startswith("epoch 2/4  loss 0.5000  ")


def test_progress_lines_elsewhere():
    stream = io.StringIO()
    X_val, y_val = np.zeros((4, 2)), np.array([1, 1, 0, 1])
    fitted = types.SimpleNamespace(predict=lambda X: np.ones(len(X), int))
    progress = cli.EpochProgress(stream, X_val, y_val)
    feed_epochs(progress, (1.25,), total=10, fitted=fitted)
    line = stream.getvalue()
    assert line.startswith("epoch  1/10  loss 1.2500  val 0.7500  ") and line.endswith(" s\n")
    assert "\r" not in line and "\x1b" not in line and progress.scores == [0.75]


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


# ----------------------------------------------------------------- outputs never overwrite inputs
@pytest.mark.parametrize("make_argv, victim", [
    (lambda d, m, t: ["predict", t / "test.csv", "-m", m, "-o", t / "test.csv"], "test.csv"),
    (lambda d, m, t: ["predict", t / "test.csv", "-m", m, "-o", m], "model"),
    (lambda d, m, t: ["predict", t / "test.csv", "-m", m, "-o", t / "." / "test.csv"],
     "test.csv"),
    (lambda d, m, t: ["train", t / "train.csv", "-o", t / "train.csv"], "train.csv"),
    (lambda d, m, t: ["train", t / "train.csv", "-o", t / "link.csv"], "train.csv"),
    (lambda d, m, t: ["train", t / "train.csv", "-o", t / "hard.csv"], "train.csv"),
    (lambda d, m, t: ["compare", t / "train.csv", "--plot", t / "train.csv"], "train.csv"),
], ids=["predict-data", "predict-model", "predict-dot-path", "train-data", "train-symlink",
        "train-hardlink", "compare-plot"])
def test_an_output_that_is_an_input_is_refused(capsys, data, model, tmp_path, make_argv,
                                               victim):
    import shutil

    for name in ("train.csv", "test.csv"):
        shutil.copy(getattr(data, name.split(".")[0]), tmp_path / name)
    own_model = tmp_path / "model.skops"
    shutil.copy(model, own_model)
    if hasattr(os, "symlink"):
        os.symlink(tmp_path / "train.csv", tmp_path / "link.csv")
    os.link(tmp_path / "train.csv", tmp_path / "hard.csv")
    path = own_model if victim == "model" else tmp_path / victim
    before = path.read_bytes()
    code, out, err = run(capsys, *make_argv(data, own_model, tmp_path))
    assert code == 2
    assert_one_line_error(err, "is the input", "choose another file name")
    assert path.read_bytes() == before


# ----------------------------------------------------------------- a full disk
def fill_the_disk(monkeypatch, full_folder):
    """Make every atomic write into `full_folder` fail with ENOSPC as it is flushed."""
    full_fds = set()
    real_create, real_fsync = _atomic._create_temp_file, os.fsync

    def create(directory, basename):
        fd, tmp = real_create(directory, basename)
        if Path(directory) == Path(full_folder):
            full_fds.add(fd)
        return fd, tmp

    def fsync(fd):
        if fd in full_fds:
            full_fds.discard(fd)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    monkeypatch.setattr(_atomic, "_create_temp_file", create)
    monkeypatch.setattr(_atomic.os, "fsync", fsync)


def test_full_disk_names_the_file_and_keeps_the_model_elsewhere(capsys, data, tmp_path,
                                                                monkeypatch):
    import tempfile

    full, spare = tmp_path / "full", tmp_path / "spare"
    full.mkdir()
    spare.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spare))
    fill_the_disk(monkeypatch, full)
    code, out, err = run(capsys, "train", data.train, "-o", full / "m.skops", *FAST)
    assert code == 1
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"skdigits train: error: -o {full / 'm.skops'}: cannot write")
    assert os.strerror(errno.ENOSPC) in last
    saved = list(spare.glob("skdigits-*/m.skops"))
    assert len(saved) == 1 and str(saved[0]) in last
    assert load_model(saved[0]).predict(np.zeros((1, 784))).shape == (1,)
    assert list(full.iterdir()) == []  # no temporary file left behind


def test_full_disk_everywhere_says_the_model_is_lost(capsys, data, tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "gone"))  # mkdtemp fails
    fill_the_disk(monkeypatch, tmp_path)
    code, _, err = run(capsys, "train", data.train, "-o", tmp_path / "m.skops", *FAST)
    assert code == 1
    last = err.strip().splitlines()[-1]
    assert f"-o {tmp_path / 'm.skops'}: cannot write" in last and "lost" in last


def test_full_disk_during_predict_names_the_file(capsys, data, model, tmp_path, monkeypatch):
    fill_the_disk(monkeypatch, tmp_path)
    for argv in (["predict", data.test], ["predict", data.folder]):
        code, _, err = run(capsys, *argv, "-m", model, "-o", tmp_path / "o.csv")
        assert code == 1
        assert_one_line_error(err, f"-o {tmp_path / 'o.csv'}", os.strerror(errno.ENOSPC))
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------- bad images among many
@pytest.fixture
def folder_with_bad_images(data, tmp_path):
    import shutil

    root = shutil.copytree(data.folder, tmp_path / "folder")
    for i in range(8):
        (root / "3" / f"broken_{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return root


def test_skip_bad_images_when_training_and_evaluating(capsys, folder_with_bad_images,
                                                      tmp_path):
    argv = ["train", folder_with_bad_images, "-o", tmp_path / "m.skops", "--validation", "0",
            *FAST]
    code, _, err = run(capsys, *argv)
    assert code == 1
    assert_one_line_error(err, "broken_0.png")
    code, out, err = run(capsys, *argv, "--skip-bad-images")
    assert code == 0, err
    lines = err[err.index("Warning: "):].splitlines()
    warned = lines[:next(i for i, line in enumerate(lines) if line.startswith("epoch"))]
    assert "skipped 8 item(s)" in warned[0]
    assert len(warned) <= 7 and warned[-1] == "  ... and 3 more"  # summarised
    assert err.count("load_image_folder skipped") == 1
    code, out, err = run(capsys, "evaluate", folder_with_bad_images, "-m", tmp_path / "m.skops",
                         "--skip-bad-images")
    assert code == 0 and "Accuracy: " in out and "skipped 8" in err


def test_skip_bad_images_when_predicting(capsys, folder_with_bad_images, model, tmp_path):
    out_path = tmp_path / "labels.csv"
    code, _, err = run(capsys, "predict", folder_with_bad_images, "-m", model, "-o", out_path)
    assert code == 1 and "broken_" in err and not out_path.exists()
    code, out, err = run(capsys, "predict", folder_with_bad_images, "-m", model, "-o", out_path,
                         "--skip-bad-images")
    assert code == 0, err
    names = [line.rsplit(",", 1)[0] for line in out_path.read_text().splitlines()[1:]]
    good = [p for p in folder_with_bad_images.rglob("*.png") if not p.name.startswith(".")
            and not p.name.startswith("broken_")]
    assert sorted(names) == sorted(str(p) for p in good)
    assert "skipped 8 image file(s)" in err and f"Wrote {len(good)} predictions" in out


# ----------------------------------------------------------------- plots
def test_plots_without_matplotlib_say_how_to_install_it(capsys, data, model, tmp_path,
                                                        monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    code, _, err = run(capsys, "evaluate", data.labelled, "-m", model, "--plots", tmp_path)
    assert code == 1
    # quoted for zsh, and the form that works in a source checkout
    assert_one_line_error(err, 'pip install "skdigits[plot]"', 'pip install ".[plot]"')


def run_into_a_closed_pipe(argv, *python_options):
    """Run `python -m skdigits ARGV` with stdout a pipe whose reader has already gone."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run([sys.executable, *python_options, "-m", "skdigits", *map(str, argv)],
                              stdout=write_end, stderr=subprocess.PIPE, text=True,
                              env=repo_env(), timeout=120)
    finally:
        os.close(write_end)


def test_evaluate_plots_into_a_closed_pipe_still_saves_them(data, model, tmp_path):
    """`skdigits evaluate ... --plots DIR | head -2`: the reader has gone; the plots still come.

    Unbuffered (-u), the first line already meets the closed pipe.
    """
    result = run_into_a_closed_pipe(["evaluate", data.labelled, "-m", model, "--plots",
                                     tmp_path / "plots"], "-u")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    for name in ("confusion_matrix.png", "learning_curves.png", "misclassified.png"):
        assert (tmp_path / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_buffered_output_into_a_closed_pipe_ends_quietly(data, model):
    """Buffered (no -u), the work finishes and the lost output is not mentioned."""
    result = run_into_a_closed_pipe(["evaluate", data.labelled, "-m", model])
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


# ----------------------------------------------------------------- the data readers
def test_data_reader_examples_run():
    import doctest

    result = doctest.testmod(skdigits.data.datasets)
    assert result.failed == 0 and result.attempted >= 10


def hostile_npz(path, shape):
    """An .npz whose X_train header declares `shape` (float64) over a few bytes of data."""
    import zipfile

    header = io.BytesIO()
    np.lib.format.write_array_header_2_0(
        header, {"descr": "<f8", "fortran_order": False, "shape": shape})
    labels = io.BytesIO()
    np.save(labels, np.arange(3))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("X_train.npy", header.getvalue() + b"\0" * 64)
        archive.writestr("y_train.npy", labels.getvalue())
    return path


def test_an_npz_declaring_a_huge_array_is_refused_before_allocating(capsys, tmp_path):
    path = hostile_npz(tmp_path / "bomb.npz", (10**7, 784))  # 62.7 GB declared in 400 bytes
    code, _, err = run(capsys, "train", path, "-o", tmp_path / "m.skops")
    assert code == 1
    assert_one_line_error(err, "bomb.npz", "X_train", "MAX_NPZ_ARRAY_BYTES")


@pytest.mark.parametrize("make, fragment", [
    (lambda p: np.save(p.with_suffix(".npy"), np.zeros((2, 784))) or
     p.with_suffix(".npy").rename(p), "single array"),
    (lambda p: np.savez(p, X_train=np.zeros((3, 784)), y_train=np.zeros((3, 2))), "shape"),
    (lambda p: np.savez(p, X_train=np.array(["a", "b"]), y_train=np.arange(2)), "numeric"),
    (lambda p: np.savez(p, images=np.zeros((3, 784))), "expected arrays"),
    (lambda p: hostile_npz(p, (3, 784)), "cannot read"),  # declared 3 rows, holds 8 values
    (lambda p: p.write_bytes(b"PK\x03\x04 not really a zip"), "not a readable .npz"),
])
def test_unusable_npz_files_are_named(capsys, tmp_path, make, fragment):
    path = tmp_path / "data.npz"
    make(path)
    code, _, err = run(capsys, "train", path, "-o", tmp_path / "m.skops")
    assert code == 1
    assert_one_line_error(err, "data.npz", fragment)
