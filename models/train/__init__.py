"""Training scripts for the small trained models of the zoo (need torch; see README.md)."""
