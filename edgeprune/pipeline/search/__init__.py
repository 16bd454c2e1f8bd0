"""Budget searches: each file registers a `Search` (base.py) under the name `--search` takes."""

from edgeprune.pipeline.search import guided, layerwise, level_search  # noqa: F401 - registers the searches
from edgeprune.pipeline.search.base import SEARCHES, Search, SearchContext

__all__ = ["SEARCHES", "Search", "SearchContext"]
