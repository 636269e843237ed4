"""Live reconstruction while the scan is acquired (`ptycho-torch live`, `pt.live`).

    sources.py           where frames come from: the FrameSource interface, open_source, the growing SWMR HDF5 source
    frames.py            what a source hands out (SourceHeader, Frames) and the buffer that orders frames
    beamline_source.py   a growing CXI / NeXus / dataset-path HDF5 file read as the offline reader reads it
    directory_source.py  a directory of frame files renamed into place whole (--watch DIR/)
    zmq_source.py        a ZMQ stream of frames (--watch tcp://host:port): the protocol and its reader
    acquisition.py       a simulated acquisition: a scan written frame by frame at a rate (SWMR HDF5, a
                         directory of frame files, or a ZMQ stream)
    running.py           the running canvas that grows (and moves) with the positions, and the frames kept
    loop.py              the live loop: read, reconstruct, publish; at the end `reconstruct`'s products
"""
