"""The gateway (AIStore proxy): cluster map, BMD and etlMD, redirects to HRW owners,
ETL init fan-out (etl) and job fan-out and status (jobs)."""
