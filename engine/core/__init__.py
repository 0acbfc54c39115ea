"""Sans-I/O pieces every node shares: names and unames, the cluster map and HRW
placement (smap), typed request bodies, ETL specs. No aiohttp here."""
