"""sim: simulated data and the demo; none of it runs inside the engine.

Synthetic layers (`lattice`; `zaozhuang`, the generator of the engine's built-in layer;
`national`), a registry of simulated people (`population`), their days of fixes with
GPS/Wi-Fi/cell errors (`movement`, in the one table type `fixes.Fixes`), carriers sending
them (`carriers`; `simulate`, behind `geofence simulate`; `replay`), the demo's day with
its planted events and their truth (`scenario`, `ground`, `zones`, `planting`), and
`geofence demo` itself (`demo`, `demo_setup`, `demo_screen`, scored by `scorecard`);
harsh, life-like days for measuring alarm trust (`harsh_errors`, `harsh_day`).
"""
