"""The reward rules: the pure core (no I/O, no clock, no Faust or aiohttp imports).

`referral` (stage "customer"), `invoice_link` (stage "invoice"), `referrer` (stage
"referrer"), `money`, and `engine`, their in-memory composition that replay, the tests and
the benchmarks run. The Faust shell around them (`processors.app`, `agents`, `stages`,
`publisher`, `handoff`, `windows`, `web`) sits beside this package. This package is the
unit compiled with mypyc (docs/performance.md#compiled-core).
"""

from schemas import _compiled

_compiled.activate(__import__(__name__, fromlist=["_"]))
