from ingest.schemas import export

for written in export():
    print(written)
