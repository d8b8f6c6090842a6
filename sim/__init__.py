"""sim: simulated data and the demo (none of it runs inside the engine).

The synthetic layers (`zaozhuang`, the generator of the built-in layer; `national`), a
registry of simulated people (`population`), their day of fixes with GPS/Wi-Fi/cell errors
(`movement`, one table type: `fixes.Fixes`), carriers sending them (`carriers`,
`simulate` behind `geofence simulate`, `replay`), the demo's day with planted events
(`scenario`, `ground`, `zones`, `planting`) and `geofence demo` itself (`demo`, scored
by `scorecard`).
"""
