"""Reading and writing: datasets and RDM files (data), safe files and run folders (files), tables and JSON
(tables), progress lines."""
