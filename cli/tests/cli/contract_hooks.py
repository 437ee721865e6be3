# schemathesis hooks for the contract test (cli/tests/cli/contract.rs), loaded through
# SCHEMATHESIS_HOOKS.
#
# A list cursor is opaque (format `taskstore-cursor` in openapi.json): only a `next_cursor`
# the API gave is meaningful, so text merely matching its pattern is no valid input, and
# schemathesis, left to itself, sends such text as "valid" data. This teaches it what a
# well-formed cursor of a single Redis server looks like (the server `taskstore serve` runs on
# in the test): the `SCAN` position `s<n>` and the ids still to read, `p<id in hex>` each.
# The stateful phase also sends the real cursors of earlier pages.

import schemathesis
from hypothesis import strategies as st


def _cursor(position, pending_ids):
    fields = [f"s{position}"] + ["p" + task_id.encode().hex() for task_id in pending_ids]
    return ".".join(fields)


# Printable ASCII ids, of the lengths the API's own ids have and shorter.
_ids = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=40)

schemathesis.openapi.format(
    "taskstore-cursor",
    st.builds(_cursor, st.integers(min_value=0, max_value=2**64 - 1), st.lists(_ids, max_size=3)),
)
