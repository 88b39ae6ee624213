"""``avatar eval``: quality metrics of rendered talking-head videos.

| module | what |
|---|---|
| ``syncnet.py`` | SyncNet v2 (Chung & Zisserman, "Out of time", 2016): the network, its weights file |
| ``sync.py`` | Sync-C / Sync-D (LSE-C / LSE-D): MFCC front end, face track and crop, the offset search |
| ``run.py`` | one video or a whole ``avatar batch`` run: reads media, calls every metric whose inputs are given |
| ``fid.py``, ``fvd.py``, ``identity.py`` | FID, FVD, identity similarity (written separately; ``run.py`` imports them lazily) |

Docs: docs/eval.md.
"""
