"""The demo: a local Orthanc as the PACS, Hounsfield on embedded defaults, a synthetic CT study."""
