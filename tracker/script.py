"""The tracking script as served: minified once at start-up, gzipped, with a strong ETag."""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass
from pathlib import Path

import rjsmin


@dataclass(frozen=True)
class Script:
    minified: bytes
    gzipped: bytes
    etag: str

    @classmethod
    def load(cls, path: Path) -> Script:
        """Read and minify ``path`` (rjsmin strips comments and whitespace only, so behaviour is unchanged)."""
        minified = rjsmin.jsmin(path.read_text()).encode()
        return cls(minified, gzip.compress(minified, 9, mtime=0),
                   '"' + hashlib.sha256(minified).hexdigest()[:20] + '"')
