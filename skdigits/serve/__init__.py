"""``skdigits serve``: a local page where you draw a digit and watch the model answer.

The page has a drawing pad (mouse, touch and pen, through pointer events), a
clear button and an image upload.  While you draw it shows the model's
probability for every class, the top one large, and the picture the model
really receives (its 28 x 28 input after preprocessing).

It needs the ``serve`` extra (Starlette and uvicorn)::

    pip install "skdigits[serve]"
    skdigits serve -m model.skops          # then open http://127.0.0.1:8000/

Importing this package is light (argparse only): the web libraries are
imported when the server starts, so ``skdigits --help`` works without them.
"""

import argparse
import ipaddress
import socket
import sys

__all__ = ["add_parser", "run", "serve"]

# The exit codes of the skdigits command (see skdigits.cli).
EXIT_OK, EXIT_DATA, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8000

_MISSING_EXTRA = ('skdigits serve needs the "serve" extra (missing module: {name}); '
                  'install it with: pip install "skdigits[serve]"')


def add_parser(subparsers):
    """Add the ``serve`` command to the ``skdigits`` sub-command parsers; return its parser."""
    p = subparsers.add_parser(
        "serve", help="a local web page: draw a digit and watch the model answer",
        description="Serve a page where you draw a digit (mouse, touch or pen) or upload a "
                    "picture, and see the model's probability for every class and the "
                    "28 x 28 input it receives. The model file is read once, at start, "
                    "with load_model's allow-list. The server listens on 127.0.0.1 (this "
                    "machine only) unless --host says otherwise, serves every asset "
                    "itself and contacts nothing; uploads are kept in memory, capped in "
                    "bytes and pixels, and never written to disk. Needs the serve extra: "
                    'pip install "skdigits[serve]". Ctrl-C stops it.')
    p.add_argument("-m", "--model", required=True, metavar="MODEL",
                   help="model file saved by 'skdigits train' or skdigits.save_model")
    p.add_argument("--port", type=_port, default=DEFAULT_PORT,
                   help=f"TCP port (default {DEFAULT_PORT}; 0: any free port)")
    p.add_argument("--host", default=DEFAULT_HOST,
                   help=f"address to listen on (default {DEFAULT_HOST}: this machine only; "
                        "0.0.0.0 lets other machines on the network in)")
    return p


def _port(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be in [0, 65535], got {value}")
    return value


def run(args):
    """Run ``skdigits serve`` with parsed `args` until Ctrl-C; return the exit code.

    0 when the server stops by itself, 1 for a missing extra or a bad model
    file, 2 for an address that cannot be listened on, 130 after Ctrl-C
    (the command's code for an interrupted run).
    """
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        return _fail(_MISSING_EXTRA.format(name=exc.name or exc), EXIT_DATA)
    from .predictor import DigitPredictor

    try:
        predictor = DigitPredictor(_load(args.model), source=args.model)
    except (OSError, ValueError) as exc:
        return _fail(str(exc), EXIT_DATA)
    try:
        sock = bind(args.host, args.port)
    except OSError as exc:
        return _fail(f"cannot listen on {args.host} port {args.port}: "
                     f"{exc.strerror or exc}", EXIT_USAGE)
    host, port = sock.getsockname()[:2]
    print(f"Model: {args.model} ({' -> '.join(predictor.describe()['steps'])})")
    print(f"Serving on {_url(host, port)}  (Ctrl-C to stop)", flush=True)
    if not is_loopback(args.host):
        print(f"Note: listening on {args.host}: other machines that can reach this one "
              "can open the page", file=sys.stderr)
    try:
        serve(predictor, sock)
    except KeyboardInterrupt:  # uvicorn shuts down cleanly, then passes Ctrl-C on
        print("Stopped (Ctrl-C).", file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_OK


def _fail(message, code):
    print(f"skdigits serve: error: {message}", file=sys.stderr)
    return code


def _load(path):
    from pathlib import Path

    from ..persistence import load_model

    if not Path(path).is_file():
        raise ValueError(f"{path}: no such model file")
    return load_model(path)


def is_loopback(host):
    """True for addresses (or 'localhost') that only this machine can reach."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind(host, port):
    """A listening TCP socket on (host, port); port 0 picks a free one."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that
    # say so.  Without it the JSON body, written after the headers, waited
    # for the browser's delayed ACK: 40 ms added to every answer in Chromium.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


def _url(host, port):
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"


#: Host names (Host header) a server on 127.0.0.1 answers to: refusing other
#: names stops a web page elsewhere from reaching it through DNS rebinding.
LOOPBACK_NAMES = ("127.0.0.1", "localhost")


def allowed_hosts_for(host):
    """Host names to answer to: this machine's names on IPv4 loopback, else any.

    Starlette's host check cannot parse bracketed IPv6 Host headers, so a
    server on ``::1`` answers to any name.
    """
    if not is_loopback(host) or ":" in host:
        return None
    return sorted(set(LOOPBACK_NAMES) | {host})


def make_server(predictor, sock, **app_options):
    """A uvicorn server for `predictor` on the listening socket `sock` (not started)."""
    import uvicorn

    from .app import create_app

    host = sock.getsockname()[0]
    app = create_app(predictor, allowed_hosts=allowed_hosts_for(host), **app_options)
    config = uvicorn.Config(app, log_level="warning", access_log=False, server_header=False,
                            lifespan="off", limit_concurrency=64, timeout_keep_alive=5)
    return uvicorn.Server(config)


def serve(predictor, sock, **app_options):
    """Serve `predictor` on `sock` until interrupted (uvicorn handles Ctrl-C)."""
    make_server(predictor, sock, **app_options).run(sockets=[sock])
