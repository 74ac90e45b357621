"""``python -m ingest.schemas``: rewrite the committed JSON Schemas and the AsyncAPI document."""

from ingest.schemas import export
from ingest.schemas.asyncapi import write
from pizzashop.shop import registered_flows

for written in export():
    print(written)
print(write(registered_flows()))
