"""Running a recipe's cells on a Ray cluster (`edgekit run RECIPE --ray`).

    placement.py    which device kind times which backend, the units of work, cluster checks
    ledger.py       the one results file, rewritten as units finish; --resume reads it back
    on_node.py      what runs on a node: build a cell's bundle, time the PyTorch original
    on_device.py    what runs on a timing node: verify and run a bundle (stdlib only, shipped by value)
    launcher.py     the driver: connect, check, submit, stream results, progress, Ctrl-C

Nothing outside this package imports Ray; Ray does the scheduling, retries and transfers.
"""
