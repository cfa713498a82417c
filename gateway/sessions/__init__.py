"""Reward sessions: ymids the gateway issues to a Telegram user of the Mini App, and checks
on the postback, so a leaked URL key alone cannot mint rewards.

`initdata.py` checks the Mini App's Telegram `initData` (who is asking); `ymid.py` makes and
verifies the signed ymid that binds that user, a nonce, an expiry and optionally the placement.
Neither knows the request path, the store or the config's shape: they take keys and values.
"""
