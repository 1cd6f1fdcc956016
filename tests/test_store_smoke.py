from clasp.store import ShardStore


def test_make_store_round_trip(make_store):
    root = make_store([5, 3])
    store = ShardStore.open(root, verify=True)
    keys = []
    for entry in store.shards:
        with store.open_shard(entry) as shard:
            keys += [int(k) for k in shard.read().key]
    assert keys == list(range(8))
