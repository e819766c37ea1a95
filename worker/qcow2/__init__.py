"""qcow2: the format (:mod:`.format`) and a reader over ranged reads (:mod:`.reader`)."""
