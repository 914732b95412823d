"""Generated demo cohorts: dermatology (synthetic demo data) and diabetes (real Pima patients, simulated spectra)."""
