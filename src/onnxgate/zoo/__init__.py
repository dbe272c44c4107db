"""Zoo mode: many models at once, each in its own worker process (locally or as Ray tasks), one ledger, one
dashboard. Names load on first use: importing this package imports neither torch nor ray."""

from .._lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "run_zoo": ".api", "load_zoo": ".spec", "Zoo": ".spec", "ZooModel": ".spec", "ZooReport": ".report",
    "Ledger": ".ledger", "BUILTIN": ".spec",
})
__all__ = ["run_zoo", "load_zoo", "Zoo", "ZooModel", "ZooReport", "Ledger", "BUILTIN"]
