"""Running a recipe's cells on a Ray cluster (`edgekit run RECIPE --ray`).

    placement.py    which device kind times which backend, the units of work, cluster checks
    on_node.py      what runs on a node: build a cell's bundle, time the PyTorch original
    on_device.py    what runs on a timing node: verify and run a bundle (stdlib only, shipped by value)
    launcher.py     RayLauncher, the driver: connect, check, submit, stream results, progress, Ctrl-C

The results file is the ledger every launcher writes (edgekit.launch.ledger).

Nothing outside this package imports Ray; Ray does the scheduling, retries and transfers.
"""
