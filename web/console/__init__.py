"""The web console: dashboard, studies, audit, sharing, and the patient's own page."""
