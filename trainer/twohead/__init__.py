"""The two-head scorer: open-set supervised familiarity score (DRA / SaliencyCut)."""
