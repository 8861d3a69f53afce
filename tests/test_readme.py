"""Every fenced code block of README.md runs here, or says why it cannot.

* ``python`` blocks run as scripts, each in a fresh folder holding small
  versions of the files the examples read (``train.csv``, ``digits/``, ...);
* ``bash`` blocks made of ``skdigits ...`` lines run each command;
* ``console`` blocks are transcripts: their ``$ skdigits ...`` commands run in
  order in one folder, and the output must match the README's line for line,
  numbers (and size units) masked, ``...`` standing for any number of lines;
  the commands run in this process through ``skdigits.cli.main`` (the console
  script's entry point), which spares a second or more of imports each;
* a block right after a ``<!-- not-tested: reason -->`` line is not run, and
  must give its reason.

The data is scikit-learn's 8 x 8 digits upscaled to MNIST's 28 x 28, a few
hundred of them, so that every example takes seconds.
"""

import io
import os
import re
import shlex
import shutil
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import write_kaggle_csv
from skdigits import cli

pytestmark = pytest.mark.filterwarnings("error")

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
FENCE = re.compile(r"^```(\S*)\s*$")
NOT_TESTED = re.compile(r"^<!--\s*not-tested:(.*?)-->\s*$")
#: A number as the commands print it, with the unit of a file size if any:
#: "0.9772", "20", "1.4 MB" and "411.7 kB" all mask to the same thing.
NUMBER = r"\d+(?:\.\d+)?(?:e[+-]?\d+)?(?: (?:bytes|kB|MB|GB))?"
TIMEOUT = 300


@dataclass
class Block:
    line: int  # of the opening fence, 1-based
    lang: str
    text: str
    not_tested: str = None  # the reason given, or None

    @property
    def lines(self):
        return [line for line in self.text.splitlines() if line.strip()]


def readme_blocks(text):
    lines = text.splitlines()
    blocks, i = [], 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        start, body = i, []
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i])
            i += 1
        assert i < len(lines), f"README.md line {start + 1}: the code block is never closed"
        marker = NOT_TESTED.match(lines[start - 1].strip()) if start else None
        blocks.append(Block(start + 1, fence.group(1), "\n".join(body) + "\n",
                            marker.group(1).strip() if marker else None))
        i += 1
    return blocks


def how_to_run(block):
    """'script', 'commands', 'transcript', or None when the test cannot run it."""
    if block.lang == "python":
        return "script"
    if block.lang == "console":
        commands = [line for line in block.lines if line.startswith("$ ")]
        if commands and all(line.startswith("$ skdigits ") for line in commands) \
                and block.lines[0].startswith("$ "):
            return "transcript"
    if block.lang in ("bash", "sh", "shell"):
        lines = [line for line in block.lines if not line.lstrip().startswith("#")]
        if lines and all(line.startswith("skdigits ") for line in lines):
            return "commands"
    return None


BLOCKS = readme_blocks(README.read_text(encoding="utf-8"))
RUN = [b for b in BLOCKS if b.not_tested is None]


# ----------------------------------------------------------------- coverage
def test_every_block_is_run_or_says_why_not():
    assert len(BLOCKS) >= 10 and len(RUN) >= 8, "the README's blocks were not found"
    unrunnable = [f"line {b.line} ({b.lang or 'no language'})" for b in RUN
                  if how_to_run(b) is None]
    assert not unrunnable, (
        f"README.md blocks that this test cannot run: {', '.join(unrunnable)}; make them "
        "runnable or put '<!-- not-tested: reason -->' on the line before the fence")
    unexplained = [f"line {b.line}" for b in BLOCKS if b.not_tested == ""]
    assert not unexplained, f"not-tested blocks without a reason: {', '.join(unexplained)}"


def test_not_tested_markers_sit_right_before_a_block():
    lines = README.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, start=1):
        if NOT_TESTED.match(line.strip()):
            following = lines[number] if number < len(lines) else ""
            assert FENCE.match(following), f"README.md line {number}: a not-tested marker " \
                                           "must be followed by the block's fence"


def test_the_parser_sees_fences_and_markers():
    text = ("intro\n<!-- not-tested: needs a GPU -->\n```bash\nnvidia-smi\n```\n\n"
            "```python\nprint(1)\n```\n```\nplain text\n```\n")
    gpu, python, plain = readme_blocks(text)
    assert (gpu.line, gpu.lang, gpu.not_tested) == (3, "bash", "needs a GPU")
    assert (python.lang, python.text, python.not_tested) == ("python", "print(1)\n", None)
    assert how_to_run(python) == "script" and how_to_run(plain) is None


# ----------------------------------------------------------------- data
def mnist_like(X, y):
    """load_digits rows (8 x 8, in [0, 1]) upscaled to MNIST's 28 x 28 uint8 layout."""
    images = np.kron(X.reshape(-1, 8, 8), np.ones((3, 3)))
    canvas = np.zeros((len(X), 28, 28))
    canvas[:, 2:26, 2:26] = images
    return np.round(canvas * 255).astype(np.uint8), np.asarray(y)


def on_paper(image):
    """A dark digit on white paper, as a photo or scan would have it."""
    paper = np.full((32, 32), 255, np.uint8)
    paper[2:30, 2:30] = 255 - image
    return Image.fromarray(paper)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, digits):
    """The files the README's examples read, small."""
    root = tmp_path_factory.mktemp("readme_workspace")
    images, labels = mnist_like(*digits)
    train, test = slice(0, 300), slice(1000, 1100)
    write_kaggle_csv(root / "train.csv", images[train], labels[train])
    write_kaggle_csv(root / "test.csv", images[test])
    write_kaggle_csv(root / "test_labelled.csv", images[test], labels[test])
    np.save(root / "X_train.npy", images[train].reshape(300, -1))
    np.save(root / "y_train.npy", labels[train])
    for i in range(40):
        folder = root / "digits" / str(labels[i])
        folder.mkdir(parents=True, exist_ok=True)
        on_paper(images[i]).save(folder / f"{i}.png")
    (root / "new").mkdir()
    on_paper(images[np.flatnonzero(labels == 3)[-1]]).save(root / "new" / "three.jpg")
    return root


@pytest.fixture
def folder(workspace, tmp_path):
    return shutil.copytree(workspace, tmp_path / "work")


def environment():
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO)] + [p for p in [os.environ.get("PYTHONPATH")]
                                                     if p]),
        # One BLAS thread, as in the other tests: on a shared machine, a second
        # spinning OpenBLAS thread makes scikit-learn's MLP many times slower.
        "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",  # stdout and stderr interleave as on a terminal
        "MPLBACKEND": "Agg",
    }


def run_script(path, cwd):
    return subprocess.run([sys.executable, path.name], cwd=cwd, env=environment(),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=TIMEOUT)


def run_skdigits(line):
    """`skdigits ARGS` through the console script's entry point: (exit code, output).

    stdout and stderr go to one buffer, interleaved as on a terminal.
    """
    words = shlex.split(line)
    assert words[0] == "skdigits", line
    output = io.StringIO()
    with redirect_stdout(output), redirect_stderr(output):
        code = cli.main(words[1:])
    return code, output.getvalue()


# ----------------------------------------------------------------- transcripts
def transcript_commands(block):
    """[(command line, expected output lines)] of a console block."""
    pairs = []
    for line in block.text.splitlines():
        if line.startswith("$ "):
            pairs.append((line[2:], []))
        else:
            pairs[-1][1].append(line)
    return [(command, _strip_blank_ends(expected)) for command, expected in pairs]


def _strip_blank_ends(lines):
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


def _normal(line):
    return " ".join(line.split())


def output_pattern(expected_lines):
    """A regex for output like `expected_lines`: numbers masked, `...` any lines."""
    parts = []
    for line in expected_lines:
        line = _normal(line)
        if line == "...":
            parts.append(r"(?:[^\n]*\n)*?")
        else:
            parts.append(NUMBER.join(re.escape(text) for text in re.split(NUMBER, line)) + r"\n")
    return "".join(parts)


def matches_transcript(expected_lines, output):
    actual = "".join(_normal(line) + "\n" for line in output.splitlines())
    return re.fullmatch(output_pattern(expected_lines), actual) is not None


def test_transcript_matching_masks_numbers_and_skips_dots():
    expected = ["epoch  1/20  loss 0.9794", "...", "Saved model.skops (1.4 MB)"]
    assert matches_transcript(expected, "epoch 1/3  loss 2.4\nx\ny\nSaved model.skops (411.7 kB)")
    assert matches_transcript(expected, "epoch 1/3 loss 2.4\nSaved model.skops (12 bytes)\n")
    assert not matches_transcript(expected, "epoch 1/3 loss 2.4\nSaved other.skops (1.4 MB)\n")
    assert not matches_transcript(expected, "Note: epoch 1/3 loss 2.4\nSaved model.skops (1 MB)")


# ----------------------------------------------------------------- the blocks
@pytest.mark.parametrize("block", RUN, ids=[f"line{b.line}-{b.lang}" for b in RUN])
def test_readme_block_runs(block, folder, monkeypatch, one_blas_thread):
    kind = how_to_run(block)
    if kind is None:
        pytest.fail(f"README.md line {block.line}: not runnable and not marked not-tested")
    if kind == "script":
        script = folder / "readme_example.py"
        script.write_text(block.text, encoding="utf-8")
        result = run_script(script, folder)
        assert result.returncode == 0 and "Traceback" not in result.stdout, \
            f"README.md line {block.line}:\n{result.stdout[-3000:]}"
        return
    monkeypatch.chdir(folder)
    if kind == "commands":
        for line in block.lines:
            code, output = run_skdigits(line)
            assert code == 0, f"{line}:\n{output[-3000:]}"
        return
    for command, expected in transcript_commands(block):
        code, output = run_skdigits(command)
        assert code == 0, f"{command}:\n{output[-3000:]}"
        assert matches_transcript(expected, output), (
            f"README.md line {block.line}: the output of `{command}` no longer looks like "
            "the README's.\n--- README:\n" + "\n".join(expected) + f"\n--- now:\n{output}")
