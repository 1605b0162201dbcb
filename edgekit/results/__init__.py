"""Results: the one home of the results document (read, validate, write), its tables, the
report site and the CI gate.

    document.py   the ``edgekit-results/1`` document: build, write safely, load and validate
    tables.py     rows and tables for people (plain text, Markdown, rich); torch-free
    site.py       report.md / report.csv / report.html and PNG plots (matplotlib)
    gate.py       `edgekit check`: regressions against a baseline document

Importing this package imports neither matplotlib nor rich.
"""

from .document import RESULTS_FORMAT, load_results_document, load_results_documents, results_document, write_results

__all__ = ["RESULTS_FORMAT", "load_results_document", "load_results_documents", "results_document", "write_results"]
