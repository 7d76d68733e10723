"""What every Beam-side layer shares: the record and dead-letter types, the error tag, metric names, text
helpers and the way a setting is declared. Imports neither tasks nor IO, so both can import it."""
