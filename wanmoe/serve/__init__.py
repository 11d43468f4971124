"""`wanmoe serve`: an HTTP API and web page over a persistent job queue (docs/serve.md).

    store.py    the JobStore protocol and SQLiteStore (the embedded default)
    jobs.py     JSON body -> validated request (the CLI's rules, called, not copied)
    worker.py   one worker thread per device: claim, generate with checkpoints, write the MP4
    app.py      the HTTP handler (standard library ThreadingHTTPServer)
    openapi.py  the OpenAPI 3 schema
    cli.py      the `wanmoe serve` command
"""
