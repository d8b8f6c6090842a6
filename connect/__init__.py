"""Pull connectors (SPEC §14): ask a carrier's positioning API, feed the engine as a carrier.

`config` ([connect.http.NAME]), `mapping` (the request built, the answer read),
`schedule` (who is due), `budget` (the daily budget and the back-off), `metrics`,
`feed` (the carrier client in its thread), `runner` (the loop, and `run_connector`).
"""
