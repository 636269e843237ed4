"""Live reconstruction while the scan is acquired (`ptycho-torch live`, `pt.live`).

    sources.py      where frames come from: the FrameSource interface, the growing SWMR HDF5 source
    acquisition.py  a simulated acquisition: a scan written into SWMR HDF5 frame by frame at a rate
    running.py      the running canvas that grows with the positions, and the frames kept
    loop.py         the live loop: read, reconstruct, publish; at the end `reconstruct`'s products
"""
