#!/usr/bin/env python3
"""Run llama.cpp's own HTTP server (llama-server) in this process, through the
``xllamacpp`` wheel, until SIGTERM, SIGINT or end of stdin.

usage: serve.py MODEL.gguf ALIAS READY_FILE [--port 0] [--n-ctx 2048] [--parallel 2] [--threads N]
                [--embedding --pooling mean]
                [--chat-template-file FILE.jinja]

Port 0 (the default) lets the system pick a free port.  Once the HTTP server
listens, its address (``http://127.0.0.1:PORT``) is written to READY_FILE.
The server also stops when stdin reaches its end, so it does not outlive the
process that started it with a pipe as stdin (realserver.server does).
start_server() in realserver/server.py is the way to use this.
"""

import argparse
import os
import signal
import sys
import threading


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("alias")
    parser.add_argument("ready_file")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--n-ctx", type=int, default=2048)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--watch-stdin", action="store_true", help="stop when stdin reaches its end")
    parser.add_argument("--embedding", action="store_true", help="serve /v1/embeddings (llama-server --embeddings)")
    parser.add_argument("--pooling", choices=["none", "mean", "cls", "last", "rank"],
                        help="how token vectors become one embedding; /v1/embeddings needs one other than none")
    parser.add_argument("--chat-template-file", help="a Jinja chat template to use instead of the model's own")
    args = parser.parse_args()

    import xllamacpp as xlc  # the parent checked it is installed; an ImportError lands in the log

    params = xlc.CommonParams()
    params.model.path = args.model
    params.model_alias = {args.alias}
    params.hostnames = ["127.0.0.1"]
    params.port = args.port
    params.n_ctx = args.n_ctx
    params.n_parallel = args.parallel   # slots: this many requests decode together
    params.kv_unified = True            # one request may use the whole n_ctx, as on LM Studio
    params.cpuparams.n_threads = args.threads
    params.cpuparams_batch.n_threads = args.threads
    params.ui = False
    if args.embedding:
        params.embedding = True
    if args.pooling:
        params.pooling_type = getattr(xlc.llama_pooling_type, "LLAMA_POOLING_TYPE_" + args.pooling.upper())
    if args.chat_template_file:  # as llama-server --jinja --chat-template-file (jinja is on by default)
        with open(args.chat_template_file, encoding="utf-8") as handle:
            params.chat_template = handle.read()

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    if args.watch_stdin:
        fd = sys.stdin.fileno()

        def watch() -> None:
            try:  # the raw descriptor: a BufferedReader held by this thread would block interpreter exit
                while os.read(fd, 4096):
                    pass
            except OSError:
                pass
            finally:
                stop.set()
        threading.Thread(target=watch, daemon=True).start()

    server = xlc.Server(params)  # loads the model and starts the HTTP thread
    address = server.listening_address
    print("listening", address, flush=True)
    partial = args.ready_file + ".partial"
    with open(partial, "w") as handle:
        handle.write(address)
    os.replace(partial, args.ready_file)

    stop.wait()
    print("stopping", flush=True)
    del server  # waits for the main loop to exit
    sys.stdout.flush()
    os._exit(0)  # skip interpreter finalization: the stdin watcher may still be blocked in read()


if __name__ == "__main__":
    sys.exit(main())
