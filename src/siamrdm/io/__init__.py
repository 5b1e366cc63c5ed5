"""Reading and writing: bounded reading (limits), array file headers (arrayfiles), images (images), rsatoolbox
files (rsafiles), RDM files (rdmfiles), datasets and the Algonauts layout (datasets), safe files and run folders
(files), tables and JSON (tables), progress lines."""
