//! The wire frames of both directions, converted to one domain type so the
//! link engine is written once for the processor and the coordinator.

use proto::processor_v1::{
    Ack, CoordinatorFrame, Data, Hello, LinkError, Ping, Pong, ProcessorFrame, coordinator_frame,
    processor_frame,
};

/// A frame of either direction.
#[derive(Debug, Clone, PartialEq)]
pub enum LinkFrame {
    /// Opens the stream.
    Hello(Hello),
    /// An exactly-once message.
    Data(Data),
    /// Acknowledges data up to an id.
    Ack(Ack),
    /// Liveness probe.
    Ping(Ping),
    /// Liveness answer.
    Pong(Pong),
    /// A refused frame.
    Error(LinkError),
}

/// Which end of the link this is: fixes the wire types of each direction.
pub trait Side: Send + Sync + 'static {
    /// Frames this side receives.
    type Inbound: prost::Message + Default + Send + 'static;
    /// Frames this side sends.
    type Outbound: prost::Message + Send + 'static;
    /// Short name for logs ("processor" or "coordinator").
    const NAME: &'static str;
    /// Unwraps a received frame; `None` if it carries no frame kind.
    fn open(frame: Self::Inbound) -> Option<LinkFrame>;
    /// Wraps a frame to send.
    fn wrap(frame: LinkFrame) -> Self::Outbound;
}

/// The processor's end: receives `CoordinatorFrame`, sends `ProcessorFrame`.
#[derive(Debug, Clone, Copy)]
pub struct ProcessorSide;

/// The coordinator's end: receives `ProcessorFrame`, sends `CoordinatorFrame`.
#[derive(Debug, Clone, Copy)]
pub struct CoordinatorSide;

impl Side for ProcessorSide {
    type Inbound = CoordinatorFrame;
    type Outbound = ProcessorFrame;
    const NAME: &'static str = "processor";

    fn open(frame: CoordinatorFrame) -> Option<LinkFrame> {
        use coordinator_frame::Frame;
        Some(match frame.frame? {
            Frame::Hello(f) => LinkFrame::Hello(f),
            Frame::Data(f) => LinkFrame::Data(f),
            Frame::Ack(f) => LinkFrame::Ack(f),
            Frame::Ping(f) => LinkFrame::Ping(f),
            Frame::Pong(f) => LinkFrame::Pong(f),
            Frame::Error(f) => LinkFrame::Error(f),
        })
    }

    fn wrap(frame: LinkFrame) -> ProcessorFrame {
        use processor_frame::Frame;
        ProcessorFrame {
            frame: Some(match frame {
                LinkFrame::Hello(f) => Frame::Hello(f),
                LinkFrame::Data(f) => Frame::Data(f),
                LinkFrame::Ack(f) => Frame::Ack(f),
                LinkFrame::Ping(f) => Frame::Ping(f),
                LinkFrame::Pong(f) => Frame::Pong(f),
                LinkFrame::Error(f) => Frame::Error(f),
            }),
        }
    }
}

impl Side for CoordinatorSide {
    type Inbound = ProcessorFrame;
    type Outbound = CoordinatorFrame;
    const NAME: &'static str = "coordinator";

    fn open(frame: ProcessorFrame) -> Option<LinkFrame> {
        use processor_frame::Frame;
        Some(match frame.frame? {
            Frame::Hello(f) => LinkFrame::Hello(f),
            Frame::Data(f) => LinkFrame::Data(f),
            Frame::Ack(f) => LinkFrame::Ack(f),
            Frame::Ping(f) => LinkFrame::Ping(f),
            Frame::Pong(f) => LinkFrame::Pong(f),
            Frame::Error(f) => LinkFrame::Error(f),
        })
    }

    fn wrap(frame: LinkFrame) -> CoordinatorFrame {
        use coordinator_frame::Frame;
        CoordinatorFrame {
            frame: Some(match frame {
                LinkFrame::Hello(f) => Frame::Hello(f),
                LinkFrame::Data(f) => Frame::Data(f),
                LinkFrame::Ack(f) => Frame::Ack(f),
                LinkFrame::Ping(f) => Frame::Ping(f),
                LinkFrame::Pong(f) => Frame::Pong(f),
                LinkFrame::Error(f) => Frame::Error(f),
            }),
        }
    }
}
